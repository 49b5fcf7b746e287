"""The client side of the command stream: ``await bus.send(command, actor=..., timeout=...)``.

A command is published to its code's partition subject on the command stream (and stored
there before ``send`` continues); the processor's reply comes back on this bus's inbox.
A timeout means "outcome unknown": the command may still be decided later, so retry it with
the SAME command id, which returns the original outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta

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


class CommandBus:
    def __init__(self, nc: Client, layout: Layout, command_stream: str) -> None:
        self._nc = nc
        self._layout = layout
        self._stream = command_stream
        self._inbox = f"_INBOX.vlbus.{uuid.uuid4().hex}"
        # token -> the caller's future; None as its result: the connection was lost meanwhile
        self._waiting: dict[str, asyncio.Future[Accepted | Rejected | None]] = {}
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
        every caller gets "outcome unknown" now instead of waiting out its timeout."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(None)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        fut = self._waiting.pop(token, None)
        if fut is None or fut.done():
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
        command_id = validate_command_id(command_id) if command_id else uuid.uuid4().hex
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
        token = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Accepted | Rejected | None] = loop.create_future()
        self._waiting[token] = fut
        deadline = loop.time() + timeout
        try:
            try:
                ack_msg = await self._nc.request(
                    subject,
                    envelope.model_dump_json().encode(),
                    timeout=min(timeout, 5.0),
                    headers={REPLY_HEADER: f"{self._inbox}.{token}"},
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                raise BusUnavailable("the command stream did not acknowledge") from exc
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
                raise BusUnavailable("not connected to NATS") from exc
            ack = json.loads(ack_msg.data)
            if "error" in ack or ack.get("stream") != self._stream:
                raise BusUnavailable(f"command stream refused the command: {ack.get('error')}")
            remaining = max(0.0, deadline - loop.time())
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), remaining)
            except TimeoutError as exc:
                raise CommandTimeout(command_id) from exc
            if reply is None:
                raise CommandTimeout(command_id, "before the NATS connection was lost")
            return reply
        finally:
            self._waiting.pop(token, None)
