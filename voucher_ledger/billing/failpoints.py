"""Crash points for the crash-safety tests: ``VL_FAILPOINTS=checkout.after_redeem`` makes the
process die (``os._exit``) when it reaches that point, as a SIGKILL there would. Unset in
production; the names are listed where ``crash_if`` is called."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_ARMED = frozenset(filter(None, os.environ.get("VL_FAILPOINTS", "").split(",")))
EXIT_CODE = 86


def armed(name: str) -> bool:
    return name in _ARMED


def crash_if(name: str) -> None:
    if name in _ARMED:
        log.critical("failpoint %s reached: exiting", name)
        logging.shutdown()
        os._exit(EXIT_CODE)
