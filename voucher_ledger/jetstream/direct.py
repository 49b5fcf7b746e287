"""Messages of chosen subscriptions taken straight from nats.py's protocol parser.

For every incoming message nats.py parses the headers into a dict, builds a ``Msg``, puts it on
the subscription's queue and wakes the subscription's task, which awaits the callback: in a
redemption storm the bus client gets two messages per command (the command stream's PubAck and
the processor's reply) and a processor one delivery per command, and that path was a fifth of
their CPU (bench/README.md). :class:`DirectDispatch` puts one hook on a client's
``_process_msg`` (the coroutine nats.py's parser calls for each ``MSG``/``HMSG``) that hands the
raw parts of the messages of registered subscriptions to a plain function, synchronously; the
function may decline a message (a status message, say), which then takes nats.py's own path to
the subscription's callback, as does every message of other subscriptions.

nats.py has no public hook for this, so the hook is fenced (:mod:`voucher_ledger.jetstream.
fastpaths`): with the fast paths switched off, or nats.py's ``_process_msg`` or
``Subscription._id`` not as expected, :meth:`DirectDispatch.add` declines and the subscription
receives through its callback, nats.py's public path. Should nats.py stop calling
``_process_msg``, registered subscriptions likewise keep receiving through their callbacks
(``tests/integration/test_bus.py`` fails if the hook is no longer used). A handler that raises
hands its message to nats.py's path as well.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from voucher_ledger.jetstream import fastpaths

log = logging.getLogger(__name__)

# (subject, reply, payload, raw headers or None) -> whether the message was taken
DirectHandler = Callable[[bytes, bytes, bytes, bytes | None], bool]
_ProcessMsg = Callable[[int, bytes, bytes, bytes, Any], Awaitable[None]]

_ATTR = "_voucher_ledger_direct"
_HDR_LINE = b"NATS/1.0"


class DirectDispatch:
    """The hook of one client (see the module docstring); get it with :meth:`of`."""

    def __init__(self, nc: Client) -> None:
        self._handlers: dict[int, DirectHandler] = {}
        self._passthrough: _ProcessMsg | None = None
        self._owned = False  # the client had no instance-level _process_msg before the hook
        self._hook = self._process_msg  # one bound method, to recognise it on the client
        self._nc = nc
        self.taken = 0  # messages handed to a handler

    @classmethod
    def of(cls, nc: Client) -> DirectDispatch:
        dispatch: DirectDispatch | None = vars(nc).get(_ATTR)
        if dispatch is None:
            dispatch = cls(nc)
            setattr(nc, _ATTR, dispatch)
        return dispatch

    def add(self, sub: Subscription, handler: DirectHandler) -> bool:
        """Hand ``sub``'s messages to ``handler`` from now on. False if the subscription has
        no id to recognise it by or the fast path is off (see the module docstring): its
        callback keeps receiving everything."""
        if not fastpaths.DIRECT.allowed():
            return False
        sid = getattr(sub, "_id", None)
        if not isinstance(sid, int):
            fastpaths.DIRECT.refuse("a subscription has no integer Subscription._id")
            return False
        if self._passthrough is None:
            self._owned = "_process_msg" not in vars(self._nc)
            self._passthrough = self._nc._process_msg
            setattr(self._nc, "_process_msg", self._hook)  # noqa: B010 - an instance-level hook
        self._handlers[sid] = handler
        return True

    def remove(self, sub: Subscription) -> None:
        """Stop handing ``sub``'s messages over; with none left, the client is left as it was
        (unless another hook was put on top of this one meanwhile: then this one stays and
        passes everything on)."""
        sid = getattr(sub, "_id", None)
        if isinstance(sid, int):
            self._handlers.pop(sid, None)
        nc = self._nc
        if self._handlers or vars(nc).get("_process_msg") is not self._hook:
            return
        if self._owned:
            del vars(nc)["_process_msg"]
        else:
            setattr(nc, "_process_msg", self._passthrough)  # noqa: B010
        self._passthrough = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
    ) -> None:
        handler = self._handlers.get(sid)
        if handler is not None:
            try:
                if handler(subject, reply, data, headers):
                    self.taken += 1
                    return
            except Exception:  # a handler's bug must neither stop the read loop nor lose a message
                log.exception("direct handler for subscription %d failed; nats.py takes it", sid)
        assert self._passthrough is not None
        await self._passthrough(sid, subject, reply, data, headers)


def write_now(nc: Client) -> None:
    """Hand what the client has buffered to its socket now, as nats.py's flusher task would
    once the event loop gets to it. A processor that has just sent an append and goes on to
    reply to the round before does not make the append wait behind that work. Does nothing
    if the client is not connected, the fast paths are off or nats.py's internals are not as
    expected (:data:`fastpaths.WRITE_NOW`): nats.py's flusher task still writes everything."""
    if not fastpaths.WRITE_NOW.allowed():
        return
    pending = getattr(nc, "_pending", None)
    transport = getattr(nc, "_transport", None)
    if not pending or transport is None or not nc.is_connected:
        return
    if not isinstance(pending, list) or not isinstance(
        getattr(nc, "_pending_data_size", None), int
    ):
        fastpaths.WRITE_NOW.refuse("a connected client's _pending or _pending_data_size")
        return
    transport.writelines(pending[:])
    nc._pending = []
    nc._pending_data_size = 0


def status_of(headers: bytes | None) -> bytes | None:
    """The inline status of a message (``NATS/1.0 503\\r\\n...`` -> ``b"503"``), or None."""
    if headers and headers[8:9] == b" ":
        return headers[9:12]
    return None


def header_value(headers: bytes | None, name: bytes) -> str | None:
    """One header's value from raw headers (``NATS/1.0\\r\\nName: value\\r\\n...``); a name is
    matched as nats.py writes it (case as given)."""
    if not headers:
        return None
    key = b"\r\n" + name + b":"
    start = headers.find(key)
    if start < 0:
        return None
    start += len(key)
    end = headers.find(b"\r\n", start)
    return headers[start : end if end >= 0 else len(headers)].strip().decode()


__all__ = ["DirectDispatch", "DirectHandler", "header_value", "status_of", "write_now"]
