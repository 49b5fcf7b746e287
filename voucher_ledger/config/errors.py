"""The error a process gives when it cannot start."""

from __future__ import annotations


class StartupError(RuntimeError):
    """The service cannot start; the message says why, for a human."""
