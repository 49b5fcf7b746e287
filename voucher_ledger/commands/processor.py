"""The sequential command processor of one partition.

Commands are grouped by aggregate (a voucher code or a customer's wallet; arrival order kept
within one) and decided one by one against the aggregate's in-memory state; the new events of
ALL the aggregates decided together go out as one append (the event store's group commit: one
atomic batch, shared with the other partitions' processors, in which each aggregate's first
message carries its own ``Nats-Expected-Last-Subject-Sequence``), then the commands are
answered and acked. An aggregate whose expectation was wrong is reloaded from the stream and
its commands are decided again; the others' appends stand.

Pipelined: while one append is in flight, the commands that arrive are decided against the
outcome it will have (its aggregates' states as decided, sequences not yet known) and go out
as the next append the moment it is acknowledged, each aggregate expecting the last sequence
that append got; the answers to the first are worked out after the next one is on the wire.
The expectation keeps this exact: if the append in flight conflicts or fails, nothing decided
after it for the same aggregate is sent; those commands are decided again from the stream.
Only one append per partition is in flight at a time.

The deciding and settling core (:meth:`PartitionProcessor.turn`, :meth:`~PartitionProcessor.drain`)
needs of NATS only what it reads of a delivered command (:class:`Delivery`, which nats.py's
``Msg`` is) and where replies go (:class:`ReplyPublisher`, the NATS client by default); its
event store is the port (:class:`voucher_ledger.commands.store.EventStore`). The pull loop in
:meth:`~PartitionProcessor.run` feeds it from the partition's consumer; tests feed it directly
(``tests/unit/test_processor_memory.py``, on the in-memory store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import nats.errors
from nats.aio.client import Client
from pydantic import ValidationError

from voucher_ledger.billing.failpoints import crash_if
from voucher_ledger.commands.chain import placement_after
from voucher_ledger.commands.store import (
    MAX_BATCH,
    ConcurrencyConflict,
    EventStore,
    PartResult,
    TransientAppendError,
)
from voucher_ledger.commands.wire import (
    ON_HOLD,
    REPLY_HEADER,
    Accepted,
    CommandEnvelope,
    Rejected,
)
from voucher_ledger.jetstream.direct import write_now
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.jetstream.pulls import PullLoop
from voucher_ledger.ledger import campaign, global_voucher, voucher, wallet
from voucher_ledger.ledger.errors import CommandExpired, DomainError
from voucher_ledger.ledger.events import EventEnvelope, RecordedEvent
from voucher_ledger.ledger.voucher import Decided, Policy, Receipt, Refused, Replayed
from voucher_ledger.signing.chain import PartChecker
from voucher_ledger.signing.proof import (
    GENESIS,
    EventChecker,
    EventSigner,
    IntegrityError,
    Link,
    proof_of,
    read_proof,
)

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 64
REPLY_PREFIX = "_INBOX."


@dataclass
class ProcessorStats:
    """Counters a processor instance exposes (metrics endpoint, tests)."""

    commands: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome)
    conflicts: int = 0
    transient_refusals: int = 0  # parts the store refused for a passing reason (not conflicts)
    loads: int = 0
    presumed: int = 0  # aggregates decided as new without reading their history
    presumed_wrong: int = 0  # ... that had a history after all (reloaded, decided again)
    appends: int = 0
    append_seconds: float = 0.0  # wall time of the appends counted in ``appends``
    events_appended: int = 0
    batches: int = 0
    chained: int = 0  # placements handed on by the partition that decided their redemption


def accepted_from(receipt: Receipt) -> Accepted:
    return Accepted(
        command_id=receipt.command_id,
        command_type=receipt.command_type,
        seq=receipt.seq,
        voucher=receipt.voucher,
        redemption=receipt.redemption,
    )


class _FoldedAgain:
    """A kind whose new events' sequences are in more places than the wallet's: once stored,
    they are folded again from the state before them (:meth:`PartitionProcessor._settle`)."""

    def restamp(self, working: Any, stamps: list[tuple[str, int]]) -> Any:
        return None


class _VoucherKind(_FoldedAgain):
    """How the processor treats a voucher: folded from its code's events; replies replay the
    receipt (the voucher as the command left it)."""

    aggregate: Literal["voucher"] = "voucher"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def fold(self, key: str, history: list[RecordedEvent]) -> Any:
        return voucher.fold(key, history)

    def handle(self, state: Any, command: Any, command_id: str, now: datetime) -> Any:
        return voucher.handle(state, command, command_id, self.policy, now)

    def evolve(self, state: Any, recorded: RecordedEvent, fingerprint: str) -> Any:
        return voucher.evolve(state, recorded, fingerprint)

    def reply(self, state: Any, command: Any, command_id: str) -> Accepted:
        receipt = state.receipts.get(command_id)
        if receipt is None:  # a ReceiveGlobal that changed nothing (issue #22)
            return Accepted(
                command_id=command_id,
                command_type=command.type,
                seq=state.last_seq,
                voucher=state.view() if state.issued else None,
            )
        return accepted_from(receipt)


class _WalletKind:
    """A customer's wallet: replies show the wallet and the order as they are now, so a retried
    checkout step learns where the order got to."""

    aggregate: Literal["wallet"] = "wallet"

    def fold(self, key: str, history: list[RecordedEvent]) -> Any:
        return wallet.fold(key, history)

    def handle(self, state: Any, command: Any, command_id: str, now: datetime) -> Any:
        return wallet.handle(state, command, command_id, now)

    def evolve(self, state: Any, recorded: RecordedEvent, fingerprint: str) -> Any:
        return wallet.evolve(state, recorded, fingerprint)

    def restamp(self, working: Any, stamps: list[tuple[str, int]]) -> Any:
        return wallet.restamp(working, stamps)

    def reply(self, state: Any, command: Any, command_id: str) -> Accepted:
        receipt = state.receipts.get(command_id)
        order = state.orders.get(command.order_id)
        return Accepted(
            command_id=command_id,
            command_type=command.type,
            seq=receipt.seq if receipt is not None else state.last_seq,
            wallet=state.view(),
            order=order,
        )


class _CampaignKind(_FoldedAgain):
    """A campaign: decides its own commands and every command for one of its codes (issue
    #21); replies replay the receipt (the campaign, and a code's voucher view and redemption,
    as the command left them)."""

    aggregate: Literal["campaign"] = "campaign"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def fold(self, key: str, history: list[RecordedEvent]) -> Any:
        return campaign.fold(key, history)

    def handle(self, state: Any, command: Any, command_id: str, now: datetime) -> Any:
        return campaign.handle(state, command, command_id, self.policy, now)

    def evolve(self, state: Any, recorded: RecordedEvent, fingerprint: str) -> Any:
        return campaign.evolve(state, recorded, fingerprint)

    def reply(self, state: Any, command: Any, command_id: str) -> Accepted:
        receipt: campaign.CampaignReceipt = state.receipts[command_id]
        return Accepted(
            command_id=receipt.command_id,
            command_type=receipt.command_type,
            seq=receipt.seq,
            voucher=receipt.voucher,
            redemption=receipt.redemption,
            campaign=receipt.campaign,
        )


class _GlobalKind(_FoldedAgain):
    """A global voucher at the hub (issue #22): replies show it as it is now."""

    aggregate: Literal["global"] = "global"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def fold(self, key: str, history: list[RecordedEvent]) -> Any:
        return global_voucher.fold(key, history)

    def handle(self, state: Any, command: Any, command_id: str, now: datetime) -> Any:
        return global_voucher.handle(state, command, command_id, self.policy)

    def evolve(self, state: Any, recorded: RecordedEvent, fingerprint: str) -> Any:
        return global_voucher.evolve(state, recorded, fingerprint)

    def reply(self, state: Any, command: Any, command_id: str) -> Accepted:
        receipt = state.receipts.get(command_id)
        return Accepted(
            command_id=command_id,
            command_type=command.type,
            seq=receipt.seq if receipt is not None else state.last_seq,
            global_voucher=state.view() if state.issued is not None else None,
        )


AggregateKind = _VoucherKind | _WalletKind | _CampaignKind | _GlobalKind


def rejected_from(command_id: str, error: DomainError) -> Rejected:
    details = {k: v for k, v in error.context.items() if isinstance(v, str | int | bool)}
    return Rejected(
        command_id=command_id, reason=error.reason, message=error.message, details=details
    )


def new_event_id() -> str:
    """A random (version 4) UUID as text, without building a ``uuid.UUID`` object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_VARIANT = "89ab"

AggregateKey = tuple[str, str]  # ("voucher", CODE), ("wallet", customer), ("campaign", ID)


class StateCache:
    """Per-partition LRU of aggregate states, so hot codes and wallets are not reloaded; with
    each state, the chain head of its signed history (the link its next event signs).

    Bounded (10,000 aggregates per partition, 80,000 on the default eight partitions): an
    aggregate that falls out is loaded from the stream again when a command comes for it."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._items: OrderedDict[AggregateKey, tuple[Any, str]] = OrderedDict()
        self._capacity = capacity

    def get(self, key: AggregateKey) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def head(self, key: AggregateKey) -> str:
        """The chain head of the cached state (GENESIS when not cached)."""
        item = self._items.get(key)
        return GENESIS if item is None else item[1]

    def put(self, key: AggregateKey, state: Any, head: str = GENESIS) -> None:
        self._items[key] = (state, head)
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, key: AggregateKey) -> None:
        self._items.pop(key, None)


class Delivery(Protocol):
    """What the processor uses of a delivered command (nats.py's ``Msg`` is one)."""

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str] | None: ...

    async def ack(self) -> None: ...

    async def term(self) -> None: ...


class ReplyPublisher(Protocol):
    """Where the processor's replies go (nats.py's ``Client`` is one)."""

    async def publish(self, subject: str, payload: bytes = b"") -> None: ...


@dataclass
class _Item:
    msg: Delivery
    envelope: CommandEnvelope


class _Chained:
    """A placement chained to a redemption (:class:`~voucher_ledger.commands.wire.Then`),
    handed by the partition that decided the redemption to the one that decides the wallet,
    in this process. Nothing to ack: it never was on the command stream (lost with the
    process, as a command not yet decided on the memory command stream is, so the caller's
    retry or the checkout recovery finishes it). Its reply goes out inside the redemption's."""

    __slots__ = ("redemption", "reply_to")

    data = b""
    headers = None

    def __init__(self, reply_to: str, redemption: Accepted) -> None:
        self.reply_to = reply_to
        self.redemption = redemption

    async def ack(self) -> None:
        return None

    async def term(self) -> None:
        return None


# The processor of a partition held in this process, if it is (a placement's chain goes there).
Route = Callable[[int], "PartitionProcessor | None"]


@dataclass
class _Plan:
    """One aggregate's share of an append: the commands decided (in arrival order), their new
    events, and the state they were decided against, whose last sequence the append expects.

    A plan decided while the append before it is in flight (``after``) starts from that
    append's outcome as decided (``working`` of its plan there): the events are the same
    whatever sequences they get, but the expectation is known, and the plan kept, only once
    that append is acknowledged (:meth:`PartitionProcessor._settle`)."""

    key: AggregateKey
    kind: AggregateKind
    subject: str
    state: Any
    items: list[_Item]
    new: list[tuple[EventEnvelope, str]]  # (event, the causing command's fingerprint)
    outcomes: list[Rejected | tuple[str, bool]]
    working: Any  # the state after ``new`` (their stream sequences not known yet)
    expect: int  # the subject's last sequence the append expects
    after: _Round | None = None
    head: str = GENESIS  # the chain head after ``new`` (each new event chains to the one before)
    # decided against the empty state, the aggregate's history not read (presumed new): the
    # append's expectation (no event on the subject) confirms it
    presumed: bool = False
    links: list[Link] = field(default_factory=list)  # ``new``'s chain links, to seal (signing)


@dataclass
class _Round:
    """An append in flight: the plans whose events it carries, and its task."""

    plans: dict[AggregateKey, _Plan]
    task: asyncio.Task[list[PartResult]] = field(init=False)
    started: float = field(default_factory=time.perf_counter)
    ended: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class PartitionProcessor:
    """The loop of one partition, pipelined: while one append is in flight, the commands that
    arrive are decided against the outcome it will have, and go out as the next append as soon
    as it is acknowledged; the replies and acks of the first follow that next append instead
    of holding it back. A hot code's commands are therefore decided while the server stores
    the round before (bench/README.md, session 6)."""

    def __init__(
        self,
        nc: Client,
        layout: Layout,
        store: EventStore,
        command_stream: str,
        partition: int,
        *,
        policy: Policy,
        stats: ProcessorStats,
        fetch_batch: int = 512,
        cache: StateCache | None = None,
        replies: ReplyPublisher | None = None,
        signer: EventSigner | None = None,
        checker: EventChecker | None = None,
        route: Route | None = None,
    ) -> None:
        """``replies``: where the replies go (default: ``nc``). ``signer``: every new event is
        sealed with it (chained to its aggregate's head); ``checker``: every loaded history is
        checked with it before it is folded (both None: unsigned, unchecked; tests only).
        ``route``: the processors of the partitions this process holds (a redemption's chained
        placement is handed to its wallet's; None, or not held here: the caller places it)."""
        self._nc = nc
        self._replies: ReplyPublisher = nc if replies is None else replies
        self._layout = layout
        self._store = store
        self._command_stream = command_stream
        self.partition = partition
        self._policy = policy
        self._stats = stats
        self._fetch_batch = min(fetch_batch, MAX_BATCH)
        self.cache = cache or StateCache()
        self._signer = signer
        self._checker = checker
        self._route = route
        self._stopped = False
        self._pulls: PullLoop | None = None
        self._local: list[_Item] = []  # chained placements handed over, not taken yet
        self._kinds: dict[str, AggregateKind] = {
            "voucher": _VoucherKind(policy),
            "wallet": _WalletKind(),
            "campaign": _CampaignKind(policy),
            "global": _GlobalKind(policy),
        }
        # Commands not decided yet, per aggregate in arrival order; the plans of the next
        # append (decided); the append in flight; consecutive rounds with a conflict.
        self._groups: dict[AggregateKey, list[_Item]] = {}
        self._next: dict[AggregateKey, _Plan] = {}
        self._inflight: _Round | None = None
        self._attempt = 0
        self._held: dict[AggregateKey, int] = {}  # on hold: the sequence that failed the check
        # Aggregates not cached whose history must be read before deciding (not presumed new:
        # the presumption was wrong, or would decide nothing that an append could confirm).
        self._must_load: set[AggregateKey] = set()

    @property
    def decided_ahead(self) -> int:
        """Commands decided for the next append and not sent yet (tests, diagnostics)."""
        return sum(len(plan.items) for plan in self._next.values())

    def offer(self, item: _Item) -> bool:
        """Take a chained placement (from this process's partition that decided its
        redemption); False if this processor is stopping (the caller answers without it)."""
        if self._stopped:
            return False
        self._local.append(item)
        if self._pulls is not None:
            self._pulls.nudge()
        return True

    def stop(self) -> None:
        """Ask the loop to end after the current batch (cancellation alone can be swallowed
        by ``asyncio.wait_for`` inside nats.py's fetch on Python < 3.12)."""
        self._stopped = True

    def _should_stop(self, task: asyncio.Task[Any] | None) -> bool:
        """``task``: the loop's own (looked up once, not on every turn)."""
        return self._stopped or (task is not None and task.cancelling() > 0)

    def pull_loop(self) -> PullLoop:
        """The partition's deliveries, with the one header a command carries (its reply inbox)."""
        return PullLoop(
            self._nc,
            self._command_stream,
            self._layout.processor_durable(self.partition),
            batch=self._fetch_batch,
            keep_headers=(REPLY_HEADER,),
        )

    async def run(self) -> None:
        pulls = self.pull_loop()
        await pulls.start()
        self._pulls = pulls
        log.info(
            "partition %d: processing (%s)",
            self.partition,
            self._layout.processor_durable(self.partition),
        )
        me = asyncio.current_task()
        try:
            while not self._should_stop(me):
                flight = self._inflight
                # No waiting while decided or undecided commands could go out now; with an
                # append in flight, wake up for new commands or for its end.
                ready = flight is None and bool(self._groups or self._next or self._local)
                try:
                    msgs = await pulls.next(
                        timeout=0.0 if ready else 1.0,
                        until=None if flight is None else flight.task,
                    )
                except nats.errors.ConnectionClosedError:
                    return
                except (nats.errors.Error, OSError) as exc:
                    log.warning("partition %d: pull failed: %r", self.partition, exc)
                    await asyncio.sleep(0.5)
                    continue
                if self._should_stop(me):
                    break
                await self.turn(msgs)
            # Stopping: what was taken is finished (decided, appended, answered).
            await self.drain()
        finally:
            self._pulls = None
            flight, self._inflight = self._inflight, None
            if flight is not None and not flight.task.done():
                flight.task.cancel()  # cancelled mid-append: its commands come back
                with contextlib.suppress(BaseException):
                    await flight.task
            try:
                await pulls.stop()
            except Exception:  # noqa: BLE001 - best effort while shutting down
                log.debug("partition %d: unsubscribe failed", self.partition)

    async def process(self, msgs: Sequence[Delivery]) -> None:
        """Decide, append and answer ``msgs`` (and whatever is pending) to the end."""
        await self.turn(msgs)
        await self.drain()

    async def drain(self) -> None:
        """Take every pending command to its end: decided, appended, answered and acked (or
        left unacked to come back, after a failure)."""
        while self._groups or self._next or self._local or self._inflight is not None:
            flight = self._inflight
            if flight is not None and not flight.task.done():
                await asyncio.wait({flight.task})
            await self.turn(())

    async def turn(self, msgs: Sequence[Delivery]) -> None:
        """One step: an append that is over is settled first (and the next one sent at once),
        then the new commands are decided into the next append, which goes out now if none is
        in flight."""
        flight = self._inflight
        if flight is not None and flight.task.done():
            await self._settle(flight)
        if msgs:
            await self._take(msgs)
        if self._local:
            local, self._local = self._local, []
            for item in local:
                self._groups.setdefault(item.envelope.command.aggregate, []).append(item)
        if self._groups:
            await self._decide_pending()
        if self._inflight is None and self._next:
            await self._launch()

    async def _take(self, msgs: Sequence[Delivery]) -> None:
        self._stats.batches += 1
        for msg in msgs:
            try:
                envelope = CommandEnvelope.model_validate_json(msg.data)
            except (ValidationError, DomainError, ValueError) as exc:
                await self._refuse_malformed(msg, exc)
                continue
            self._groups.setdefault(envelope.command.aggregate, []).append(_Item(msg, envelope))

    async def _launch(self) -> None:
        """Send the decided plans as the next append (in a task of its own); its batch is
        written out before the caller goes on. With a signer, the append's events are sealed
        first, with one signature (:meth:`EventSigner.seal`)."""
        if self._signer is not None:
            self._seal(self._next.values())
        flight = _Round(self._next)
        flight.task = asyncio.create_task(self._append(flight))
        self._next = {}
        self._inflight = flight
        await asyncio.sleep(0)  # the task publishes its batch ...
        write_now(self._nc)  # ... and it goes to the socket now, not after the caller's work

    def _seal(self, plans: Iterable[_Plan]) -> None:
        """Every new event of ``plans`` with its proof: each aggregate's events are one part,
        whose last event carries the one signature over all the parts' last links (a Merkle
        root). Each part stands on its own, so an aggregate whose part of the append is refused
        (a conflict) leaves the others' proofs valid."""
        assert self._signer is not None
        chosen = [plan for plan in plans if plan.new]
        sealed = self._signer.seal([plan.links for plan in chosen])
        for plan, proofs in zip(chosen, sealed, strict=True):
            plan.new = [
                (envelope.model_copy(update={"proof": proof}), fingerprint)
                for (envelope, fingerprint), proof in zip(plan.new, proofs, strict=True)
            ]

    async def _append(self, flight: _Round) -> list[PartResult]:
        try:
            return await self._store.append_parts(
                [(p.subject, p.expect, [env for env, _ in p.new]) for p in flight.plans.values()]
            )
        finally:
            flight.ended = time.perf_counter()

    async def _settle(self, flight: _Round) -> None:
        """An append is over: send the next one (its expectations now known), then work out
        the final states of the aggregates it stored (cached), answer and ack their commands.
        An aggregate whose expectation was wrong (:class:`ConcurrencyConflict`), or whose part
        the store refused for a passing reason (:class:`TransientAppendError`: nothing stored),
        is dropped from the cache and its commands, with those decided after them, go back to
        be decided again after a reload and a backoff. If the whole append failed, nothing of
        it is acked: its commands come back after ``ack_wait``; those decided after it are
        decided again from the stream."""
        self._inflight = None
        try:
            results: list[PartResult] | None = flight.task.result()
        except Exception as exc:  # noqa: BLE001 - the append's failure, handled here
            # It may or may not have landed: reload next time. Not acked, its commands come
            # back after ack_wait and are decided again.
            log.error(
                "partition %d: %d aggregates failed: %r", self.partition, len(flight.plans), exc
            )
            results = None
        stored: list[tuple[_Plan, list[RecordedEvent]]] = []
        failed: dict[AggregateKey, list[_Item]] = {}
        conflicts = 0
        transient = 0
        if results is None:
            for plan in flight.plans.values():
                if plan.new:
                    self.cache.drop(plan.key)
                    failed[plan.key] = []
        else:
            for plan, result in zip(flight.plans.values(), results, strict=True):
                if isinstance(result, ConcurrencyConflict | TransientAppendError):
                    if isinstance(result, ConcurrencyConflict) and plan.presumed:
                        # Not new after all: not contention, so no backoff; read its history.
                        self._must_load.add(plan.key)
                        self._stats.presumed_wrong += 1
                    elif isinstance(result, ConcurrencyConflict):
                        conflicts += 1
                    else:
                        transient += 1
                    self.cache.drop(plan.key)
                    failed[plan.key] = plan.items
                else:
                    stored.append((plan, result))
        for key, items in failed.items():
            later = self._next.pop(key, None)
            if later is not None:
                items = items + later.items
            if items:
                self._groups[key] = items + self._groups.pop(key, [])
        waiting = {key: plan for key, plan in self._next.items() if plan.after is flight}
        for plan, result in stored:
            if plan.key in waiting and result:
                waiting[plan.key].expect = result[-1].seq
        if self._next:
            await self._launch()
        for plan, result in stored:
            final = plan.state
            stamps: list[tuple[str, int]] = []
            if plan.new:
                # The state decided on, stamped with the sequences the events got, where the
                # kind can (the wallet); else folded again from the state before them.
                stamps = [
                    (env.command_id, rec.seq)
                    for (env, _), rec in zip(plan.new, result, strict=True)
                ]
                final = plan.kind.restamp(plan.working, stamps)
                if final is None:
                    final = plan.state
                    for rec, (_, fingerprint) in zip(result, plan.new, strict=True):
                        final = plan.kind.evolve(final, rec, fingerprint)
            if plan.new:
                self._stats.events_appended += len(plan.new)
                self.cache.put(plan.key, final, plan.head)
                later = waiting.get(plan.key)
                if later is not None:
                    later.state = final
                    later.after = None
                    # decided on this append's outcome: its events' sequences are known now
                    stamped = plan.kind.restamp(later.working, stamps)
                    if stamped is not None:
                        later.working = stamped
            await self._answer(plan.kind, plan.items, plan.outcomes, final)
        if stored:
            # The answers, then the acks, go out now in one write (their callers' next
            # commands come back sooner; written apart, the acks cost a second system call).
            for plan, _ in stored:
                for item in plan.items:
                    await item.msg.ack()
            write_now(self._nc)
        if any(plan.new for plan, _ in stored):
            self._stats.appends += 1
            self._stats.append_seconds += flight.seconds
        self._stats.conflicts += conflicts
        self._stats.transient_refusals += transient
        if results is None:
            return
        if not conflicts and not transient:
            self._attempt = 0
            return
        self._attempt += 1
        if self._attempt > MAX_CONFLICT_RETRIES:
            # Not acked: they come back after ack_wait.
            log.error("partition %d: conflicts persist: %s", self.partition, list(self._groups))
            self._groups.clear()
            self._attempt = 0
            return
        await self._store.sleep_backoff(self._attempt)

    async def _decide_pending(self) -> None:
        """Decide the undecided commands into the next append (up to one atomic batch's worth
        of events), against the state each aggregate will have when it goes out."""
        await self._ensure_loaded()
        budget = MAX_BATCH - sum(len(p.new) for p in self._next.values())
        unconfirmed = False
        for key in list(self._groups):
            if budget <= 0:
                break
            items = self._groups[key]
            plan = self._next.get(key)
            if plan is None:
                kind = self._kinds[key[0]]
                state, after = self._base(key)
                presumed = state is None
                if presumed:
                    # Not cached and not read: decided as new (most uncached aggregates are: an
                    # Organization's first checkout, a code being issued), which saves reading
                    # a history that is not there. Exact all the same: the append expects the
                    # subject to have no event, so a wrong presumption is a conflict, and the
                    # commands are decided again on the history read.
                    state = kind.fold(key[1], [])
                head = after.plans[key].head if after is not None else self.cache.head(key)
                plan = _Plan(
                    key=key,
                    kind=kind,
                    subject=self._layout.event_subject(*key),
                    state=state,
                    items=[],
                    new=[],
                    outcomes=[],
                    working=state,
                    expect=0 if after is not None else state.last_seq,
                    after=after,
                    head=head,
                    presumed=presumed,
                )
            before = len(plan.new)
            taken = self._decide(plan, items, budget, first=not self._next)
            if plan.presumed and not plan.new:
                # Nothing to append, so nothing would confirm the presumption (a refusal of a
                # code "not found" may be one of an existing code): read the history first.
                self._must_load.add(key)
                unconfirmed = True
                continue
            if not taken:
                break
            if plan.presumed and before == 0:
                self._stats.presumed += 1
            budget -= len(plan.new) - before
            self._next[key] = plan
            rest = items[taken:]
            if rest:
                self._groups[key] = rest
            else:
                del self._groups[key]
        if unconfirmed:
            await self._decide_pending()  # the ones presumed new, on their histories read

    def _base(self, key: AggregateKey) -> tuple[Any, _Round | None]:
        """The state a command for ``key`` is decided against: the outcome of the append in
        flight if it carries events of ``key``, otherwise the cached state."""
        flight = self._inflight
        if flight is not None:
            plan = flight.plans.get(key)
            if plan is not None and plan.new:
                return plan.working, flight
        return self.cache.get(key), None

    async def _ensure_loaded(self) -> None:
        """Load (concurrently) the aggregates not in the cache. One that cannot be loaded is
        left out (its commands are not acked and come back) without holding up the others.
        Only those known to need it (``_must_load``) are read: the others are presumed new."""
        self._must_load.intersection_update(self._groups)
        missing = [
            key
            for key in self._groups
            if key in self._must_load and key not in self._next and self._base(key)[0] is None
        ]
        if not missing:
            return
        loaded = await asyncio.gather(*(self._load(key) for key in missing), return_exceptions=True)
        for key, outcome in zip(missing, loaded, strict=True):
            if isinstance(outcome, IntegrityError):
                await self._hold(key, outcome)
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                log.error("partition %d: loading %s %s failed: %r", self.partition, *key, outcome)
                self._groups.pop(key, None)
            elif self._base(key)[0] is None:
                self.cache.put(key, *outcome)
        self._must_load.difference_update(missing)

    async def _hold(self, key: AggregateKey, error: IntegrityError) -> None:
        """The aggregate's history fails the signature check: nothing of it is folded, its
        commands are refused (``ON_HOLD``, 503 for the client) and acked; the other
        aggregates go on. Logged once per aggregate and event."""
        if self._held.get(key) != error.seq:
            self._held[key] = error.seq
            log.error("partition %d: %s %s is on hold: %s", self.partition, *key, error)
        message = (
            f"the ledger's history of this {key[0]} fails its signature check at stream "
            f"sequence {error.seq} ({error.code}); an operator must look at it"
        )
        for item in self._groups.pop(key, []):
            self._stats.commands[(item.envelope.command.type, ON_HOLD)] += 1
            reply = Rejected(
                command_id=item.envelope.command_id,
                reason=ON_HOLD,
                message=message,
                details={"seq": error.seq, "check": error.code},
            )
            await self._reply(item, reply)
            await item.msg.ack()

    def _decide(self, plan: _Plan, items: list[_Item], budget: int, *, first: bool) -> int:
        """Decide ``items`` in order onto ``plan`` (from its ``working`` state), up to
        ``budget`` new events (the first command of an empty append whatever its size).
        Returns how many of ``items`` were decided."""
        kind = plan.kind
        key = plan.key
        working = plan.working
        head = plan.head
        signer = self._signer
        now = datetime.now(UTC)
        taken = 0
        added = 0
        for item in items:
            env = item.envelope
            outcome = kind.handle(working, env.command, env.command_id, now)
            if isinstance(outcome, Decided):
                if env.expires_at is not None and env.expires_at < now:
                    # Already-applied commands still replay; a new one is not applied late.
                    outcome = Refused(CommandExpired(env.command_id))
                elif added + len(outcome.events) > budget and (taken or plan.items or not first):
                    break  # the rest in a later append (an append takes at least one command)
            match outcome:
                case Refused(error=error):
                    plan.outcomes.append(rejected_from(env.command_id, error))
                case Replayed():
                    plan.outcomes.append((env.command_id, True))
                case Decided(events=events):
                    fingerprint = env.command.fingerprint()
                    for event in events:
                        # Every value comes from a validated command or the decider.
                        envelope = EventEnvelope.model_construct(
                            event_id=new_event_id(),
                            aggregate=kind.aggregate,
                            aggregate_id=key[1],
                            occurred_at=now,
                            actor=env.actor,
                            command_id=env.command_id,
                            command_fingerprint=fingerprint,
                            event=event,
                        )
                        if signer is not None:
                            link = signer.chain(envelope, head)
                            plan.links.append(link)
                            head = link.head
                        working = kind.evolve(
                            working,
                            RecordedEvent.model_construct(seq=0, envelope=envelope),
                            fingerprint,
                        )
                        plan.new.append((envelope, fingerprint))
                    added += len(events)
                    plan.outcomes.append((env.command_id, False))
            plan.items.append(item)
            taken += 1
        plan.working = working
        plan.head = head
        return taken

    async def _refuse_malformed(self, msg: Delivery, exc: Exception) -> None:
        log.warning("partition %d: malformed command dropped: %s", self.partition, exc)
        self._stats.commands[("unknown", "malformed")] += 1
        reply_to = (msg.headers or {}).get(REPLY_HEADER, "")
        if reply_to.startswith(REPLY_PREFIX):
            reply = Rejected(command_id="", reason="invalid_command", message=str(exc)[:500])
            await self._replies.publish(reply_to, reply.model_dump_json().encode())
        await msg.term()

    async def _load(self, key: AggregateKey) -> tuple[Any, str]:
        """The aggregate's state and chain head, from its whole history, checked first (an
        event that fails raises :class:`IntegrityError`: nothing is folded)."""
        self._stats.loads += 1
        # Consistent: a follower's stale history could turn into a wrong rejection (not_found,
        # redemption_not_found) that no append expectation would catch.
        subject = self._layout.event_subject(*key)
        history = await self._store.load(subject, consistent=True)
        head = GENESIS
        checker = self._checker
        if checker is not None:
            parts = PartChecker(checker)
            for rec in history:
                env = rec.envelope
                if (env.aggregate, env.aggregate_id) != key:
                    raise IntegrityError(
                        rec.seq,
                        "wrong_aggregate",
                        f"an event of {env.aggregate} {env.aggregate_id} on {subject}",
                        subject,
                    )
                # The stored bytes when the store has them (an upcast event does not encode
                # back to what was signed), else the envelope encoded again.
                proof = read_proof(rec.raw) if rec.raw is not None else proof_of(env)
                parts.feed(rec.seq, key, proof, subject)
            parts.finish()
            head = parts.head(key)[1]
        self._held.pop(key, None)
        return self._kinds[key[0]].fold(key[1], history), head

    async def _answer(
        self,
        kind: AggregateKind,
        items: list[_Item],
        outcomes: list[Rejected | tuple[str, bool]],
        final: Any,
    ) -> None:
        for item, outcome in zip(items, outcomes, strict=True):
            ctype = item.envelope.command.type
            if isinstance(outcome, Rejected):
                reply: Accepted | Rejected = outcome
                self._stats.commands[(ctype, outcome.reason)] += 1
            else:
                command_id, replayed = outcome
                reply = kind.reply(final, item.envelope.command, command_id)
                # A replay (a retry, or a redelivery after a lease moved) is not a new effect.
                self._stats.commands[(ctype, "replayed" if replayed else "accepted")] += 1
                if item.envelope.then is not None and self._chain(item, reply):
                    continue  # answered with its placement's reply
            await self._reply(item, reply)

    async def _reply(self, item: _Item, reply: Accepted | Rejected) -> None:
        msg = item.msg
        if isinstance(msg, _Chained):  # a chained placement: inside its redemption's reply
            reply_to = msg.reply_to
            reply = msg.redemption.model_copy(update={"then": reply})
        else:
            reply_to = (msg.headers or {}).get(REPLY_HEADER, "")
        if reply_to.startswith(REPLY_PREFIX):
            await self._replies.publish(reply_to, reply.model_dump_json().encode())

    def _chain(self, item: _Item, reply: Accepted) -> bool:
        """Hand ``item``'s chained placement (its redemption accepted or replayed: ``reply``)
        to its wallet's partition if this process holds it; that partition answers the
        redemption with the placement's reply in it. False: not handed on (the wallet's
        partition is elsewhere, or stopping), so the redemption is answered alone and the
        caller places the order itself."""
        then = item.envelope.then
        reply_to = (item.msg.headers or {}).get(REPLY_HEADER, "")
        if then is None or self._route is None or not reply_to.startswith(REPLY_PREFIX):
            return False
        place = placement_after(then.command, reply)
        if place is None:
            return False
        target = self._route(self._layout.partition_for(*place.aggregate))
        if target is None:
            return False
        crash_if("processor.before_chained_placement")  # the redemption stored, not this
        env = item.envelope
        chained = CommandEnvelope.model_construct(
            command_id=then.command_id,
            actor=env.actor,
            sent_at=env.sent_at,
            expires_at=env.expires_at,
            command=place,
            then=None,
        )
        if not target.offer(_Item(_Chained(reply_to, reply), chained)):
            return False
        self._stats.chained += 1
        return True
