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
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voucher_ledger.commands.layout import Layout
from voucher_ledger.commands.wire import (
    REPLY_ADAPTER,
    REPLY_HEADER,
    Accepted,
    CommandEnvelope,
    Rejected,
)
from voucher_ledger.ledger.codes import validate_command_id
from voucher_ledger.ledger.commands import WalletCommandT
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import VoucherCommandT

_T = TypeVar("_T")

# Clock skew allowance between the sender and the processors for a command's deadline.
EXPIRY_GRACE = 5.0


class BusError(Exception):
    pass


class BusUnavailable(BusError):
    """The command could not be stored on the command stream (NATS down or refusing)."""


class CommandTimeout(BusError):
    """Stored, but no reply in time (or the connection was lost while waiting for it): the
    outcome is unknown. Retry with the same command id."""

    def __init__(self, command_id: str, why: str = "in time") -> None:
        super().__init__(f"no reply for command {command_id} {why}")
        self.command_id = command_id


class _ConnectionLost(Exception):
    """Set on every pending wait when the NATS connection drops."""


class CommandBus:
    """One subscription (``<inbox>.*``) carries both the command stream's PubAcks (token
    ``a<n>``) and the processors' replies (``r<n>``): no per-command request inbox, and one
    timer per wait instead of ``wait_for(shield(...))`` (the bus was 43 % of a client's CPU in
    a storm, bench/README.md)."""

    def __init__(self, nc: Client, layout: Layout, command_stream: str) -> None:
        self._nc = nc
        self._layout = layout
        self._stream = command_stream
        self._inbox = f"_INBOX.vlbus.{uuid.uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._counter = itertools.count(1)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for fut in self._waiting.values():
            fut.cancel()
        self._waiting.clear()

    def connection_lost(self) -> None:
        """NATS went away: a reply to a pending command may never come (a reply sent while
        disconnected is dropped; a memory command stream loses what was not yet decided), so
        every caller learns it now instead of waiting out its timeout."""
        for fut in list(self._waiting.values()):
            if not fut.done():
                fut.set_exception(_ConnectionLost())

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        fut = self._waiting.pop(token, None)
        if fut is None or fut.done():
            return
        if token[0] == "a":  # the command stream's PubAck (or a no-responders status)
            status = msg.headers.get("Status") if msg.headers else None
            if status:
                fut.set_exception(BusUnavailable(f"the command stream answered {status}"))
                return
            try:
                fut.set_result(json.loads(msg.data))
            except ValueError as exc:
                fut.set_exception(BusUnavailable(f"malformed acknowledgement: {exc}"))
            return
        try:
            fut.set_result(REPLY_ADAPTER.validate_json(msg.data))
        except ValueError as exc:
            fut.set_exception(BusError(f"malformed reply: {exc}"))

    async def send(
        self,
        command: VoucherCommandT | WalletCommandT,
        *,
        actor: Actor,
        command_id: str | None = None,
        timeout: float = 10.0,
        expires_at: datetime | None = None,
    ) -> Accepted | Rejected:
        """Send and wait for the outcome. ``expires_at`` can only shorten the deadline after
        which a processor refuses the command (it defaults to timeout + EXPIRY_GRACE)."""
        if self._sub is None:
            raise BusError("bus not started")
        if not self._nc.is_connected:  # nats.py would buffer the publish and wait it out
            raise BusUnavailable("not connected to NATS")
        command_id = validate_command_id(command_id) if command_id else os.urandom(16).hex()
        now = datetime.now(UTC)
        envelope = CommandEnvelope(
            command_id=command_id,
            actor=actor,
            sent_at=now,
            expires_at=min(
                now + timedelta(seconds=timeout + EXPIRY_GRACE),
                expires_at or datetime.max.replace(tzinfo=UTC),
            ),
            command=command,
        )
        subject = self._layout.command_subject(*command.aggregate)
        n = next(self._counter)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[dict[str, Any]] = loop.create_future()
        replied: asyncio.Future[Accepted | Rejected] = loop.create_future()
        self._waiting[f"a{n}"] = acked
        self._waiting[f"r{n}"] = replied
        deadline = loop.time() + timeout
        try:
            try:
                await self._nc.publish(
                    subject,
                    envelope.model_dump_json().encode(),
                    reply=f"{self._inbox}.a{n}",
                    headers={REPLY_HEADER: f"{self._inbox}.r{n}"},
                )
                ack = await _within(acked, min(timeout, 5.0))
            except TimeoutError as exc:
                if replied.done():  # the reply overtook its acknowledgement
                    return replied.result()
                raise BusUnavailable("the command stream did not acknowledge") from exc
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.OutboundBufferLimitError,
                _ConnectionLost,
            ) as exc:
                raise BusUnavailable("not connected to NATS") from exc
            if "error" in ack or ack.get("stream") != self._stream:
                raise BusUnavailable(f"command stream refused the command: {ack.get('error')}")
            try:
                return await _within(replied, max(0.0, deadline - loop.time()))
            except TimeoutError as exc:
                raise CommandTimeout(command_id) from exc
            except _ConnectionLost as exc:
                raise CommandTimeout(command_id, "before the NATS connection was lost") from exc
        finally:
            self._waiting.pop(f"a{n}", None)
            self._waiting.pop(f"r{n}", None)
            for fut in (acked, replied):  # an outcome nobody awaited is not an asyncio warning
                if fut.done() and not fut.cancelled():
                    fut.exception()


async def _within(fut: asyncio.Future[_T], seconds: float) -> _T:
    """``fut``'s result, or TimeoutError after ``seconds`` (one timer, no extra task)."""
    if not fut.done():
        timer = asyncio.get_running_loop().call_later(seconds, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
    return fut.result()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
