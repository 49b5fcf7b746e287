"""The client side of the command stream: ``await bus.send(command, actor=..., timeout=...)``.

A command is published to its code's partition subject on the command stream (and stored
there before ``send`` continues); the processor's reply comes back on this bus's inbox.
A timeout means "outcome unknown": the command may still be decided later, so retry it with
the SAME command id, which returns the original outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voucher_ledger.commands.wire import (
    ON_HOLD,
    REPLY_ADAPTER,
    REPLY_HEADER,
    Accepted,
    Rejected,
    Then,
    encode_command,
)
from voucher_ledger.jetstream.direct import DirectDispatch, status_of
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.codes import validate_command_id
from voucher_ledger.ledger.commands import CampaignCommandT, GlobalCommandT, WalletCommandT
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import VoucherCommandT

# Clock skew allowance between the sender and the processors for a command's deadline.
EXPIRY_GRACE = 5.0


class BusError(Exception):
    pass


class BusUnavailable(BusError):
    """The command could not be stored on the command stream (NATS down or refusing)."""


class LedgerOnHold(BusUnavailable):
    """The processors refused the command: its aggregate's history fails the ledger's
    signature check (a forged or replayed event), so nothing is decided for it until an
    operator has looked (``voucher-ledger verify``). Answered like an unavailable ledger."""


class CommandTimeout(BusError):
    """Stored, but no reply in time (or the connection was lost while waiting for it): the
    outcome is unknown. Retry with the same command id."""

    def __init__(self, command_id: str, why: str = "in time") -> None:
        super().__init__(f"no reply for command {command_id} {why}")
        self.command_id = command_id


class _ConnectionLost(Exception):
    """Set on every pending wait when the NATS connection drops."""


class _Pending:
    """One command waiting: for the command stream's PubAck (``acked``), then the reply."""

    __slots__ = ("acked", "future", "timer")

    def __init__(self, future: asyncio.Future[Accepted | Rejected]) -> None:
        self.future = future
        self.acked = False
        self.timer: asyncio.TimerHandle | None = None


class CommandBus:
    """One subscription (``<inbox>.*``) carries both the command stream's PubAcks (token
    ``a<n>``) and the processors' replies (``r<n>``), taken straight from nats.py's parser
    (:mod:`voucher_ledger.jetstream.direct`); a command waits on one future with one timer (the
    bus was 43 % of a client's CPU in a storm, bench/README.md)."""

    def __init__(self, nc: Client, layout: Layout, command_stream: str) -> None:
        self._nc = nc
        self._layout = layout
        self._stream = command_stream
        self._inbox = f"_INBOX.vlbus.{uuid.uuid4().hex}"
        self._waiting: dict[int, _Pending] = {}
        self._counter = itertools.count(1)
        self._sub: Subscription | None = None
        self._stream_ack = f'"stream":{json.dumps(command_stream)}'.encode()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        DirectDispatch.of(self._nc).add(self._sub, self._on_direct)

    async def close(self) -> None:
        if self._sub is not None:
            DirectDispatch.of(self._nc).remove(self._sub)
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for pending in self._waiting.values():
            pending.future.cancel()
        self._waiting.clear()

    def connection_lost(self) -> None:
        """NATS went away: a reply to a pending command may never come (a reply sent while
        disconnected is dropped; a memory command stream loses what was not yet decided), so
        every caller learns it now instead of waiting out its timeout."""
        for pending in list(self._waiting.values()):
            if not pending.future.done():
                pending.future.set_exception(_ConnectionLost())

    async def _on_reply(self, msg: Msg) -> None:
        """nats.py's path (if the direct one is not in use)."""
        status = msg.headers.get("Status") if msg.headers else None
        self._deliver(msg.subject.rsplit(".", 1)[-1], msg.data, status)

    def _on_direct(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        status = status_of(headers)
        token = subject[subject.rfind(b".") + 1 :].decode()
        self._deliver(token, data, status.decode() if status else None)
        return True

    def _deliver(self, token: str, data: bytes, status: str | None) -> None:
        try:
            pending = self._waiting.get(int(token[1:]))
        except ValueError:
            return
        if pending is None or pending.future.done():
            return
        fut = pending.future
        if token[0] == "a":  # the command stream's PubAck (or a no-responders status)
            if status:
                fut.set_exception(BusUnavailable(f"the command stream answered {status}"))
            elif self._stream_ack in data and b'"error"' not in data:
                pending.acked = True  # the usual PubAck: no need to parse it
            else:
                try:
                    ack = json.loads(data)
                except ValueError as exc:
                    fut.set_exception(BusUnavailable(f"malformed acknowledgement: {exc}"))
                    return
                if not isinstance(ack, dict) or "error" in ack or ack.get("stream") != self._stream:
                    error = ack.get("error") if isinstance(ack, dict) else ack
                    fut.set_exception(
                        BusUnavailable(f"command stream refused the command: {error}")
                    )
                else:
                    pending.acked = True
            return
        try:
            fut.set_result(REPLY_ADAPTER.validate_json(data))
        except ValueError as exc:
            fut.set_exception(BusError(f"malformed reply: {exc}"))

    async def send(
        self,
        command: VoucherCommandT | WalletCommandT | CampaignCommandT | GlobalCommandT,
        *,
        actor: Actor,
        command_id: str | None = None,
        timeout: float = 10.0,
        expires_at: datetime | None = None,
        then: Then | None = None,
    ) -> Accepted | Rejected:
        """Send and wait for the outcome. ``expires_at`` can only shorten the deadline after
        which a processor refuses the command (it defaults to timeout + EXPIRY_GRACE).
        ``then``: a redemption's chained placement (its reply comes in the redemption's)."""
        if self._sub is None:
            raise BusError("bus not started")
        if not self._nc.is_connected:  # nats.py would buffer the publish and wait it out
            raise BusUnavailable("not connected to NATS")
        command_id = validate_command_id(command_id) if command_id else os.urandom(16).hex()
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=timeout + EXPIRY_GRACE)
        if expires_at is not None and expires_at < expires:
            expires = expires_at
        # Every part is validated already (the command is a model, the actor too).
        payload = encode_command(command_id, actor, now, expires, command, then)
        subject = self._layout.command_subject(*command.aggregate)
        n = next(self._counter)
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future())
        self._waiting[n] = pending
        deadline = loop.time() + timeout
        # One timer: first the acknowledgement's (at most 5 s), then the reply's.
        pending.timer = loop.call_later(min(timeout, 5.0), self._expire, pending, deadline)
        try:
            try:
                await self._nc.publish(
                    subject,
                    payload,
                    reply=f"{self._inbox}.a{n}",
                    headers={REPLY_HEADER: f"{self._inbox}.r{n}"},
                )
                reply = await pending.future
            except _Unacknowledged as exc:
                raise BusUnavailable("the command stream did not acknowledge") from exc
            except TimeoutError as exc:
                raise CommandTimeout(command_id) from exc
            except _ConnectionLost as exc:
                if pending.acked:
                    raise CommandTimeout(command_id, "before the NATS connection was lost") from exc
                raise BusUnavailable("not connected to NATS") from exc
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.OutboundBufferLimitError,
            ) as exc:
                raise BusUnavailable("not connected to NATS") from exc
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            self._waiting.pop(n, None)
            fut = pending.future
            if fut.done() and not fut.cancelled():  # not awaited: no asyncio warning
                fut.exception()
        if isinstance(reply, Rejected) and reply.reason == ON_HOLD:
            raise LedgerOnHold(reply.message)
        return reply

    @staticmethod
    def _expire(pending: _Pending, deadline: float) -> None:
        fut = pending.future
        if fut.done():
            return
        if not pending.acked:
            fut.set_exception(_Unacknowledged())
            return
        loop = fut.get_loop()
        if loop.time() < deadline:
            pending.timer = loop.call_at(deadline, CommandBus._expire, pending, deadline)
            return
        fut.set_exception(TimeoutError())


class _Unacknowledged(Exception):
    """The command stream did not acknowledge in time."""
