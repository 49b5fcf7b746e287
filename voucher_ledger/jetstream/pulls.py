"""A raw pull loop on a durable JetStream pull consumer, for the processors and the projectors.

nats.py's ``PullSubscription.fetch`` waits for every message of a batch with its own
``asyncio.wait_for`` (a task and a timer each): in a redemption storm that was 16 % of the
serve process (bench/README.md). Here one callback subscription on an inbox collects the
deliveries into a list, pull requests (``$JS.API.CONSUMER.MSG.NEXT``, ``batch`` + ``expires``)
are published directly and kept topped up, and :meth:`PullLoop.next` hands over everything that
arrived, waiting (one timer) only when nothing did.

The deliveries are taken straight from nats.py's parser (:mod:`voucher_ledger.jetstream.direct`): a
delivery becomes a bare ``Msg`` (reply subject, payload, and only the headers the loop was asked
to keep) without nats.py's header parsing, queue and callback task; status messages (end of a
request, heartbeats) are read from their status line. Both the hook and the bare ``Msg`` are
fenced (:mod:`voucher_ledger.jetstream.fastpaths`): with the fast paths off, or nats.py not as
expected, or the hook not in use, nats.py's callback path brings the same deliveries as
ordinary messages.

Delivery semantics are the consumer's, unchanged: whatever is handed over and not acked comes
back after the consumer's ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voucher_ledger.jetstream import fastpaths
from voucher_ledger.jetstream.direct import DirectDispatch, header_value, status_of

log = logging.getLogger(__name__)

_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
_V2_MIN_TOKENS = 11  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>...
_RETRY_AFTER_CONFLICT = 0.1  # s, after a 409 (e.g. too many waiting pulls) before asking again
_EXPIRY_MARGIN = 0.5  # s, after which a request without its end-of-request status counts as over


def stream_sequence(msg: Msg) -> int:
    """The stream sequence of a JetStream delivery, read straight from its ack subject
    (``msg.metadata`` builds a whole metadata object with a timestamp for it)."""
    tokens = msg.reply.split(".")
    if len(tokens) == _V1_TOKENS:
        return int(tokens[5])
    if len(tokens) >= _V2_MIN_TOKENS:
        return int(tokens[7])
    return int(msg.metadata.sequence.stream)


class PullLoop:
    """Deliveries of one durable pull consumer, in batches."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires: float = 1.0,
        keep_headers: tuple[str, ...] = (),
    ) -> None:
        """``keep_headers``: the headers of a delivery the caller reads (``msg.headers`` holds
        only these, or is None)."""
        self._nc = nc
        self._keep = tuple((name, name.encode()) for name in keep_headers)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._batch = max(1, batch)
        self._expires = expires
        self._buffer: list[Msg] = []
        self._waiter: asyncio.Future[None] | None = None
        self._open = 0  # deliveries the outstanding requests may still bring
        self._open_until = 0.0  # loop time after which they are surely over
        self._quiet_until = 0.0  # no new request before this (after a 409)
        self._sub: Subscription | None = None
        self._nudged = False

    def nudge(self) -> None:
        """Make the waiting (or next) :meth:`next` return now, with what arrived or ``[]``:
        the caller has work of its own (a command handed over in the process)."""
        self._nudged = True
        self._wake()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        if fastpaths.RAW_MSG.allowed():  # the direct handler builds bare Msgs
            DirectDispatch.of(self._nc).add(self._sub, self._on_direct)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            DirectDispatch.of(self._nc).remove(sub)
            await sub.unsubscribe()

    def _on_direct(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        status = status_of(headers)
        if status is not None:
            self._on_status(status.decode(), headers)
            return True
        kept: dict[str, str] | None = None
        for name, raw_name in self._keep:
            value = header_value(headers, raw_name)
            if value is not None:
                kept = kept or {}
                kept[name] = value
        self._delivered(Msg(_client=self._nc, reply=reply.decode(), data=data, headers=kept))
        return True

    async def _on_msg(self, msg: Msg) -> None:
        """nats.py's path (if the direct one is not in use)."""
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status:
            self._on_status(status, (headers or {}).get("Description"))
        else:
            self._delivered(msg)

    def _on_status(self, status: str, detail: object) -> None:
        if status == "100":  # idle heartbeat / flow control
            return
        # 404 no messages, 408 request expired, 409 conflict (too many waiting requests,
        # consumer deleted, leadership change): that request is over.
        if status == "409":
            log.debug("pull %s: 409 %r", self._next_subject, detail)
            self._quiet_until = asyncio.get_running_loop().time() + _RETRY_AFTER_CONFLICT
        self._open = 0
        self._wake()

    def _delivered(self, msg: Msg) -> None:
        self._buffer.append(msg)
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _top_up(self, now: float) -> None:
        """Keep at least half a batch requested, so deliveries flow while a batch is worked on."""
        if now >= self._open_until:
            self._open = 0
        if self._open >= self._batch // 2 or now < self._quiet_until:
            return
        request = {"batch": self._batch, "expires": int(self._expires * 1_000_000_000)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        self._open += self._batch
        self._open_until = now + self._expires + _EXPIRY_MARGIN

    async def next(self, timeout: float, *, until: asyncio.Future[Any] | None = None) -> list[Msg]:
        """The deliveries that arrived (at least one, at most a batch), or ``[]`` after
        ``timeout`` or, with nothing arrived, as soon as ``until`` is done."""
        if self._sub is None:
            raise RuntimeError("pull loop not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = loop.time()
            if self._buffer:
                # At most one batch at a time: a processor's batch is decided without yielding.
                out = self._buffer[: self._batch]
                del self._buffer[: self._batch]
                await self._top_up(now)
                return out
            await self._top_up(now)
            remaining = deadline - now
            if remaining <= 0 or self._nudged or (until is not None and until.done()):
                self._nudged = False
                return []
            if self._open <= 0:  # waiting out a 409: wake up when a request may be sent again
                remaining = min(remaining, max(0.001, self._quiet_until - now))
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            timer = loop.call_later(remaining, _wake, waiter)
            wake_on_done = functools.partial(_wake_on, waiter)
            if until is not None:
                until.add_done_callback(wake_on_done)
            try:
                await waiter
            finally:
                timer.cancel()
                if until is not None:
                    until.remove_done_callback(wake_on_done)
                self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_on(waiter: asyncio.Future[None], _done: asyncio.Future[Any]) -> None:
    _wake(waiter)
