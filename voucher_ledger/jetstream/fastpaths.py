"""The fences around the fast paths that reach into private internals of nats.py (and aiohttp).

A fast path skips part of a library's own machinery through something that library does not
promise to keep (a private method, an instance attribute, a parser constant): they were each a
measured share of the service's CPU (bench/README.md). Each one sits behind a :class:`Fence`
that answers "may this fast path be used" (:meth:`Fence.allowed`):

* the process-wide switch (:func:`enabled`) must be on: the ``FAST_PATHS`` environment
  variable by default (so tests and the processor child process see it), set from the
  settings' ``fast_paths`` at start (:func:`configure`, called by ``NatsLink.open`` in
  service/stack.py and by the CLI's replay commands);
* the internals must look as this code expects: the attributes exist, the callables take the
  expected parameters (``inspect.signature``), the parser constants exist. The check runs once
  per process (at :func:`configure`, or at the first question); on a mismatch one warning names
  the internal and the library's version, and the public path is used from then on.

The fast paths and their public paths (pyproject.toml pins the minor versions they were tested
with; CI runs the core suites once more with ``FAST_PATHS=false``):

========================  ==========================================  ========================
fence                     fast path                                   public path
========================  ==========================================  ========================
:data:`DIRECT`            ``DirectDispatch`` on ``Client._process_msg`` subscription callbacks
:data:`RAW_MSG`           ``PullLoop`` builds ``Msg(_client=...)``    the ``Msg`` of a callback
:data:`WRITE_NOW`         ``write_now`` writes ``Client._pending``    nats.py's flusher task
:data:`REPLAY_PARSER`     the replay's hook on ``Parser.parse``       the replay's pull loop
``http.server.PROTOCOL``  JSON answers to malformed HTTP              stock ``web.AppRunner``
========================  ==========================================  ========================
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from importlib import metadata
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser

log = logging.getLogger(__name__)

ENV = "FAST_PATHS"
_OFF = frozenset({"0", "false", "f", "no", "n", "off"})  # pydantic's false values

_switch: bool | None = None  # None: the environment decides


def enabled() -> bool:
    """Whether fast paths may be used at all (the switch; each still needs its check)."""
    if _switch is None:
        return os.environ.get(ENV, "true").strip().lower() not in _OFF
    return _switch


def configure(on: bool) -> None:
    """Set the switch from the settings, and (when on) check every fast path now, so that a
    mismatch is reported at start rather than at first use."""
    global _switch  # the one process-wide switch
    _switch = on
    if on:
        for fence in FENCES:
            fence.allowed()


Check = Callable[[], str | None]  # None: as expected; else what does not match


class Fence:
    """One fast path: the internals it relies on, checked once per process."""

    def __init__(self, name: str, distribution: str, check: Check) -> None:
        self.name = name
        self.distribution = distribution  # whose internals (for the version in the warning)
        self._check = check
        self._checked = False
        self.problem: str | None = None  # the mismatch found, if any
        FENCES.append(self)

    def allowed(self) -> bool:
        """Whether this fast path may be used (the switch is on and its internals match)."""
        if not enabled():
            return False
        if not self._checked:
            try:
                problem = self._check()
            except Exception as exc:  # noqa: BLE001 - a check that cannot even run is a mismatch
                problem = f"the check failed: {exc!r}"
            if problem is not None:
                self.refuse(problem)
            self._checked = True
        return self.problem is None

    def refuse(self, problem: str) -> None:
        """A mismatch (found by the check, or later on an actual object): one warning, and the
        public path from now on."""
        self._checked = True
        if self.problem is not None:
            return
        self.problem = problem
        log.warning(
            "fast path %r off: %s (%s %s); using the public path",
            self.name,
            problem,
            self.distribution,
            version(self.distribution),
        )

    def reset(self) -> None:
        """Forget the check's result (tests)."""
        self._checked = False
        self.problem = None


FENCES: list[Fence] = []


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def parameters(func: Any, label: str, expected: tuple[str, ...]) -> str | None:
    """None if ``func`` takes exactly ``expected`` (after ``self``), else what it takes."""
    if not callable(func):
        return f"{label} is missing"
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return f"{label} has no signature"
    names = tuple(name for name in signature.parameters if name != "self")
    if names != expected:
        return f"{label} takes ({', '.join(names)}), not ({', '.join(expected)})"
    return None


def _subscription_id() -> str | None:
    sub = Subscription(None, id=7)
    if getattr(sub, "_id", None) != 7:
        return "Subscription._id does not hold the subscription's id"
    return None


def _check_direct() -> str | None:
    process = getattr(Client, "_process_msg", None)
    if not inspect.iscoroutinefunction(process):
        return "Client._process_msg is missing or not a coroutine function"
    expected = ("sid", "subject", "reply", "data", "headers")
    return parameters(process, "Client._process_msg", expected) or _subscription_id()


def _check_raw_msg() -> str | None:
    try:
        fields = inspect.signature(Msg).parameters
    except (TypeError, ValueError):
        return "Msg has no signature"
    missing = [name for name in ("_client", "reply", "data", "headers") if name not in fields]
    if missing:
        return f"Msg takes no {', '.join(missing)}"
    return None


def _check_write_now() -> str | None:
    state = vars(Client())
    if not isinstance(state.get("_pending"), list):
        return "Client._pending is not a list"
    if not isinstance(state.get("_pending_data_size"), int):
        return "Client._pending_data_size is not an int"
    if "_transport" not in state:
        return "Client._transport is missing"
    return None


def _check_replay_parser() -> str | None:
    awaiting = getattr(nats_parser, "AWAITING_CONTROL_LINE", None)
    if not isinstance(awaiting, int):
        return "nats.protocol.parser.AWAITING_CONTROL_LINE is missing"
    parser_class = getattr(nats_parser, "Parser", None)
    if parser_class is None:
        return "nats.protocol.parser.Parser is missing"
    parse = getattr(parser_class, "parse", None)
    if not inspect.iscoroutinefunction(parse):
        return "Parser.parse is missing or not a coroutine function"
    problem = parameters(parse, "Parser.parse", ("data",))
    if problem:
        return problem
    parser = vars(Client()).get("_ps")
    if not isinstance(parser, parser_class):
        return "Client._ps is not the client's Parser"
    if not isinstance(getattr(parser, "buf", None), bytearray):
        return "Parser.buf is not a bytearray"
    if getattr(parser, "state", None) != awaiting:
        return "Parser.state does not start at AWAITING_CONTROL_LINE"
    return _subscription_id()


DIRECT = Fence("direct dispatch", "nats-py", _check_direct)
RAW_MSG = Fence("raw pull deliveries", "nats-py", _check_raw_msg)
WRITE_NOW = Fence("write now", "nats-py", _check_write_now)
REPLAY_PARSER = Fence("replay parser hook", "nats-py", _check_replay_parser)

__all__ = [
    "DIRECT",
    "ENV",
    "FENCES",
    "RAW_MSG",
    "REPLAY_PARSER",
    "WRITE_NOW",
    "Fence",
    "configure",
    "enabled",
    "parameters",
    "version",
]
