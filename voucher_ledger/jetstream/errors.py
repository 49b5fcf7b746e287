"""Errors of the JetStream declaration, importable without the NATS client."""

from __future__ import annotations


class StreamsError(Exception):
    """streams.yaml cannot be applied to, or compared with, the server."""
