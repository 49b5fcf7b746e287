"""Global vouchers between the hub and its Sovereigns (issue #22): the two workers that turn
what NATS sourced into commands.

* **The share inbox** (on a Sovereign). nats-server copies the hub's ``global.*`` events into
  the Sovereign's stream ``<PREFIX>_HUB_GLOBALS`` (``federation.inbox_config``). The inbox
  reads that stream from its start, folds per code what concerns this Sovereign (the
  definition, all slots allotted to it, all asked back, revoked or not, whether the hub's pool
  is empty) and sends the latest figures to the code's voucher (``ReceiveGlobal``), whose
  processor records what is new and answers recalls. The figures are cumulative: a restart
  that sends them all again changes nothing.
* **The allocator** (at the hub). nats-server copies every Sovereign's events into the hub's
  trail ``<PREFIX>_SOVEREIGNS``. The allocator reads it from its start, folds per Sovereign and
  global code (a code is global on a Sovereign from its ``voucher.share_received``) the
  standing redemptions, the slots released, the recalls answered and the demand signals
  (``voucher.share_wanted``: a customer refused for want of slots), and sends them with their
  trail position to the code's aggregate (``ObserveSovereign``), which tops shares up.

Each runs in ``serve`` (with RUN_RECOVERY, like the checkout recovery): several instances
would send the same figures, which the aggregates take once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats import errors as nats_errors
from nats.aio.client import Client

from voucher_ledger.commands.bus import BusError, CommandBus
from voucher_ledger.commands.wire import Rejected
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.commands import ObserveSovereign, ReceiveGlobal
from voucher_ledger.ledger.events import (
    Actor,
    GlobalIssued,
    GlobalObserved,
    GlobalRecallRequested,
    GlobalRevoked,
    GlobalShareAllotted,
    RedemptionReversed,
    ShareReceived,
    ShareReleased,
    ShareWanted,
    VoucherRedeemed,
    decode_envelope,
)
from voucher_ledger.signing.keys import SigningKeyError
from voucher_ledger.signing.trail import TrailChecker, load_keys

log = logging.getLogger(__name__)

FEDERATION_ACTOR = Actor(sub="federation", role="system")
# Refusals that will not change by sending again: logged once, dropped.
_FINAL = frozenset(("invalid_input", "not_found", "command_id_reused"))


class _Follower:
    """Read one stream from its start with an ordered consumer, fold, and send what changed;
    start over (from the start) after any failure."""

    name = "follower"

    def __init__(self, nc: Client, bus: CommandBus, stream: str, subject: str) -> None:
        self._nc = nc
        self._bus = bus
        self._stream = stream
        self._subject = subject
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # commands accepted (for tests and the log)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pause = 0.5
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage: start over
                log.warning("%s: %r; starting over in %.1f s", self.name, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _follow(self) -> None:
        self.reset()
        js = self._nc.jetstream()
        sub = await js.subscribe(self._subject, stream=self._stream, ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats_errors.TimeoutError:
                    await self._flush()
                    continue
                self.apply(msg.subject, msg.metadata.sequence.stream, msg.data, msg.headers)
                if sub.pending_msgs == 0:
                    await self._flush()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _flush(self) -> None:
        for key, command in self.due():
            try:
                reply = await self._bus.send(command, actor=FEDERATION_ACTOR, timeout=10.0)
            except BusError as exc:
                log.info("%s: %s not sent yet: %r", self.name, key, exc)
                return  # the next round sends it
            if isinstance(reply, Rejected):
                if reply.reason not in _FINAL:
                    log.info("%s: %s refused for now (%s)", self.name, key, reply.reason)
                    return
                log.error("%s: %s refused: %s (%s)", self.name, key, reply.message, reply.reason)
            self.done(key)
            self.sent += 1

    # the fold, by subclass
    def reset(self) -> None:
        raise NotImplementedError

    def apply(
        self, subject: str, seq: int, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        raise NotImplementedError

    def due(self) -> list[tuple[Any, ReceiveGlobal | ObserveSovereign]]:
        raise NotImplementedError

    def done(self, key: Any) -> None:
        raise NotImplementedError


@dataclass
class _Received:
    definition: GlobalIssued
    allotted: int = 0
    requested: int = 0
    revoked: bool = False
    pool: int = 0
    hub_seq: int = 0


class ShareInbox(_Follower):
    """On a Sovereign: the hub's global vouchers, as far as they concern it, to each code's
    voucher."""

    name = "global share inbox"

    def __init__(self, nc: Client, bus: CommandBus, layout: Layout, sovereign: str) -> None:
        super().__init__(nc, bus, layout.inbox_stream, f"{layout.prefix}.hub.global.>")
        self.sovereign = sovereign
        self.codes: dict[str, _Received] = {}
        self._pending: set[str] = set()

    def reset(self) -> None:
        self.codes, self._pending = {}, set()

    def apply(
        self, subject: str, seq: int, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        event = decode_envelope(data).event
        if isinstance(event, GlobalIssued):
            self.codes[event.code] = _Received(definition=event, pool=event.max_redemptions)
            self._pending.add(event.code)
            return
        if not isinstance(
            event, GlobalShareAllotted | GlobalRecallRequested | GlobalObserved | GlobalRevoked
        ):
            return
        got = self.codes.get(event.code)
        if got is None:
            log.warning("%s: %s before its global.issued; ignored", self.name, event.type)
            return
        match event:
            case GlobalShareAllotted():
                got.pool = event.pool
                if event.sovereign == self.sovereign:
                    got.allotted = max(got.allotted, event.allotted_total)
            case GlobalObserved():
                got.pool = event.pool
            case GlobalRecallRequested():
                if event.sovereign != self.sovereign:
                    return
                got.requested = max(got.requested, event.requested_total)
            case GlobalRevoked():
                got.revoked = True
        got.hub_seq = seq
        self._pending.add(event.code)

    def due(self) -> list[tuple[Any, ReceiveGlobal | ObserveSovereign]]:
        out: list[tuple[Any, ReceiveGlobal | ObserveSovereign]] = []
        for code in sorted(self._pending):
            got = self.codes[code]
            out.append(
                (
                    code,
                    ReceiveGlobal(
                        code=code,
                        definition=got.definition,
                        allotted_total=got.allotted,
                        requested_total=got.requested,
                        revoked=got.revoked,
                        pool_empty=got.pool <= 0,
                        hub_seq=max(got.hub_seq, 1),
                    ),
                )
            )
        return out

    def done(self, key: Any) -> None:
        self._pending.discard(key)


@dataclass
class _Observed:
    redeemed: int = 0
    released: int = 0
    answered: int = 0
    wanted: int = 0
    trail_seq: int = 0
    is_global: bool = False


class ShareAllocator(_Follower):
    """At the hub: each Sovereign's figures for each global code, read from the trail, to the
    code's aggregate."""

    name = "global share allocator"

    def __init__(
        self,
        nc: Client,
        bus: CommandBus,
        layout: Layout,
        keys: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        super().__init__(
            nc, bus, layout.trail_stream, f"{layout.prefix}.sovereign.*.events.voucher.*"
        )
        self.pairs: dict[tuple[str, str], _Observed] = {}
        self._pending: set[tuple[str, str]] = set()
        # SOVEREIGN_KEYS_DIR: every event checked with its Sovereign's key (every voucher
        # aggregate's events are read, in order: its chains are whole)
        self._keys = keys
        self.checker: TrailChecker | None = None

    def reset(self) -> None:
        self.pairs, self._pending = {}, set()
        self.checker = TrailChecker(self._keys) if self._keys is not None else None

    def apply(
        self, subject: str, seq: int, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        sovereign = subject.split(".")[2]
        envelope = decode_envelope(data)
        if self.checker is not None:
            known = sovereign in self.checker.failed
            why = self.checker.check(
                sovereign, headers, (envelope.aggregate, envelope.aggregate_id), data
            )
            if why is not None:
                if not known:
                    log.error(
                        "%s: the trail of Sovereign %s fails the check of its signatures "
                        "(trail sequence %d): %s; the hub counts nothing more of it and gives "
                        "it no more slots",
                        self.name,
                        sovereign,
                        seq,
                        why,
                    )
                    self._pending = {key for key in self._pending if key[0] != sovereign}
                return
        event = envelope.event
        if not isinstance(
            event,
            ShareReceived | ShareReleased | ShareWanted | VoucherRedeemed | RedemptionReversed,
        ):
            return
        key = (sovereign, event.code)
        seen = self.pairs.get(key)
        if seen is None:
            if not isinstance(event, ShareReceived):
                return  # a voucher of the Sovereign's own
            seen = self.pairs[key] = _Observed(is_global=True)
        match event:
            case VoucherRedeemed():
                seen.redeemed += 1
            case RedemptionReversed():
                seen.redeemed = max(0, seen.redeemed - 1)
            case ShareReleased():
                seen.released = max(seen.released, event.released_total)
                seen.answered = max(seen.answered, event.answered_total)
            case ShareWanted():
                seen.wanted = max(seen.wanted, event.wanted_total)
            case ShareReceived():
                pass
        seen.trail_seq = seq
        self._pending.add(key)

    def due(self) -> list[tuple[Any, ReceiveGlobal | ObserveSovereign]]:
        out: list[tuple[Any, ReceiveGlobal | ObserveSovereign]] = []
        for key in sorted(self._pending):
            seen = self.pairs[key]
            out.append(
                (
                    key,
                    ObserveSovereign(
                        code=key[1],
                        sovereign=key[0],
                        trail_seq=seen.trail_seq,
                        redeemed=seen.redeemed,
                        released_total=seen.released,
                        answered_total=seen.answered,
                        wanted_total=seen.wanted,
                    ),
                )
            )
        return out

    def done(self, key: Any) -> None:
        self._pending.discard(key)


class Federation:
    """The worker this serve's role runs (none outside a hub and its Sovereigns)."""

    def __init__(self, worker: _Follower | None) -> None:
        self.worker = worker

    @classmethod
    def start(cls, s: Settings, nc: Client, bus: CommandBus, layout: Layout) -> Federation:
        worker: _Follower | None = None
        if not s.run_recovery:
            return cls(None)
        if s.hub and s.sovereign_names:
            keys = None
            if s.sovereign_keys_dir is not None:
                try:
                    keys = load_keys(s.sovereign_keys_dir, s.sovereign_names)
                except SigningKeyError as exc:
                    raise StartupError(str(exc)) from exc
            worker = ShareAllocator(nc, bus, layout, keys)
        elif s.sovereign_name:
            worker = ShareInbox(nc, bus, layout, s.sovereign_name)
        if worker is not None:
            log.info("federation: %s running", worker.name)
            worker.start()
        return cls(worker)

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
