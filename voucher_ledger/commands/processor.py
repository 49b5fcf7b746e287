"""The sequential command processor of one partition.

For each fetched batch of commands: group by aggregate (a voucher code or a customer's wallet;
arrival order kept within one), decide each aggregate's commands one by one against its
in-memory state, and append the new events of ALL the aggregates together (the event store's
group commit: one atomic batch, shared with the other partitions' processors, in which each
aggregate's first message carries its own ``Nats-Expected-Last-Subject-Sequence``), then reply
and ack. An aggregate whose expectation was wrong is reloaded from the stream and its commands
are decided again; the others' appends stand.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from voucher_ledger.commands.eventstore import (
    MAX_BATCH,
    ConcurrencyConflict,
    JetStreamEventStore,
)
from voucher_ledger.commands.layout import Layout
from voucher_ledger.commands.wire import REPLY_HEADER, Accepted, CommandEnvelope, Rejected
from voucher_ledger.ledger import voucher, wallet
from voucher_ledger.ledger.errors import CommandExpired, DomainError
from voucher_ledger.ledger.events import EventEnvelope, RecordedEvent
from voucher_ledger.ledger.voucher import Decided, Policy, Receipt, Refused, Replayed
from voucher_ledger.pulls import PullLoop

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 64
REPLY_PREFIX = "_INBOX."


@dataclass
class ProcessorStats:
    """Counters a processor instance exposes (metrics endpoint, tests)."""

    commands: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome)
    conflicts: int = 0
    loads: int = 0
    appends: int = 0
    events_appended: int = 0
    batches: int = 0


def accepted_from(receipt: Receipt) -> Accepted:
    return Accepted(
        command_id=receipt.command_id,
        command_type=receipt.command_type,
        seq=receipt.seq,
        voucher=receipt.voucher,
        redemption=receipt.redemption,
    )


class _VoucherKind:
    """How the processor treats a voucher: folded from its code's events; replies replay the
    receipt (the voucher as the command left it)."""

    aggregate: Literal["voucher"] = "voucher"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def fold(self, key: str, history: list[RecordedEvent]) -> Any:
        return voucher.fold(key, history)

    def handle(self, state: Any, command: Any, command_id: str) -> Any:
        return voucher.handle(state, command, command_id, self.policy)

    def evolve(self, state: Any, recorded: RecordedEvent, fingerprint: str) -> Any:
        return voucher.evolve(state, recorded, fingerprint)

    def reply(self, state: Any, command: Any, command_id: str) -> Accepted:
        return accepted_from(state.receipts[command_id])


class _WalletKind:
    """A customer's wallet: replies show the wallet and the order as they are now, so a retried
    checkout step learns where the order got to."""

    aggregate: Literal["wallet"] = "wallet"

    def fold(self, key: str, history: list[RecordedEvent]) -> Any:
        return wallet.fold(key, history)

    def handle(self, state: Any, command: Any, command_id: str) -> Any:
        return wallet.handle(state, command, command_id)

    def evolve(self, state: Any, recorded: RecordedEvent, fingerprint: str) -> Any:
        return wallet.evolve(state, recorded, fingerprint)

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

AggregateKey = tuple[str, str]  # ("voucher", CODE) or ("wallet", customer id)


class StateCache:
    """Per-partition LRU of aggregate states, so hot codes and wallets are not reloaded.

    Bounded (10,000 aggregates per partition, 80,000 on the default eight partitions): an
    aggregate that falls out is loaded from the stream again when a command comes for it."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._items: OrderedDict[AggregateKey, Any] = OrderedDict()
        self._capacity = capacity

    def get(self, key: AggregateKey) -> Any:
        state = self._items.get(key)
        if state is not None:
            self._items.move_to_end(key)
        return state

    def put(self, key: AggregateKey, state: Any) -> None:
        self._items[key] = state
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, key: AggregateKey) -> None:
        self._items.pop(key, None)


@dataclass
class _Item:
    msg: Msg
    envelope: CommandEnvelope


@dataclass
class _Plan:
    """One aggregate's share of an atomic batch: the commands decided, their new events, and
    the state they were decided against (whose last sequence the append expects)."""

    key: AggregateKey
    kind: _VoucherKind | _WalletKind
    subject: str
    state: Any
    items: list[_Item]
    new: list[tuple[EventEnvelope, str]]  # (event, the causing command's fingerprint)
    outcomes: list[Rejected | tuple[str, bool]]


def _consume(groups: dict[AggregateKey, list[_Item]], plan: _Plan) -> None:
    """Drop the commands ``plan`` dealt with from the pending ``groups``."""
    rest = groups[plan.key][len(plan.items) :]
    if rest:
        groups[plan.key] = rest
    else:
        del groups[plan.key]


class PartitionProcessor:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        layout: Layout,
        store: JetStreamEventStore,
        command_stream: str,
        partition: int,
        *,
        policy: Policy,
        stats: ProcessorStats,
        fetch_batch: int = 512,
        cache: StateCache | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._layout = layout
        self._store = store
        self._command_stream = command_stream
        self.partition = partition
        self._policy = policy
        self._stats = stats
        self._fetch_batch = min(fetch_batch, MAX_BATCH)
        self.cache = cache or StateCache()
        self._stopped = False
        self._kinds: dict[str, _VoucherKind | _WalletKind] = {
            "voucher": _VoucherKind(policy),
            "wallet": _WalletKind(),
        }

    def stop(self) -> None:
        """Ask the loop to end after the current batch (cancellation alone can be swallowed
        by ``asyncio.wait_for`` inside nats.py's fetch on Python < 3.12)."""
        self._stopped = True

    def _should_stop(self) -> bool:
        task = asyncio.current_task()
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
        log.info(
            "partition %d: processing (%s)",
            self.partition,
            self._layout.processor_durable(self.partition),
        )
        try:
            while not self._should_stop():
                try:
                    msgs = await pulls.next(timeout=1.0)
                except nats.errors.ConnectionClosedError:
                    return
                except (nats.errors.Error, OSError) as exc:
                    log.warning("partition %d: pull failed: %r", self.partition, exc)
                    await asyncio.sleep(0.5)
                    continue
                if msgs and not self._should_stop():
                    await self.process(msgs)
        finally:
            try:
                await pulls.stop()
            except Exception:  # noqa: BLE001 - best effort while shutting down
                log.debug("partition %d: unsubscribe failed", self.partition)

    async def process(self, msgs: Sequence[Msg]) -> None:
        self._stats.batches += 1
        groups: dict[AggregateKey, list[_Item]] = {}
        for msg in msgs:
            try:
                envelope = CommandEnvelope.model_validate_json(msg.data)
            except (ValidationError, DomainError, ValueError) as exc:
                await self._refuse_malformed(msg, exc)
                continue
            groups.setdefault(envelope.command.aggregate, []).append(_Item(msg, envelope))
        attempt = 0
        while groups:
            try:
                conflicts = await self._process_round(groups)
            except Exception as exc:  # noqa: BLE001 - logged; the commands come back
                # Not acked: the commands come back after ack_wait and are decided again.
                log.error(
                    "partition %d: %d aggregates failed: %r", self.partition, len(groups), exc
                )
                return
            if conflicts:
                attempt += 1
                if attempt > MAX_CONFLICT_RETRIES:
                    log.error("partition %d: conflicts persist: %s", self.partition, list(groups))
                    return
                await self._store.sleep_backoff(attempt)

    async def _process_round(self, groups: dict[AggregateKey, list[_Item]]) -> int:
        """Decide the pending commands of every aggregate (up to one atomic batch's worth) and
        append all their events together (the event store's group commit: one atomic batch,
        each aggregate's first message with its own expected subject sequence); reply and ack.
        What was done leaves ``groups``; an aggregate whose append conflicted is dropped from
        the cache and stays in ``groups``, to be reloaded and decided again. Returns the number
        of conflicts."""
        await self._ensure_loaded(groups)
        plans: list[_Plan] = []
        budget = MAX_BATCH
        for key, items in groups.items():
            if budget <= 0:
                break
            plan = self._decide(key, items, budget)
            budget -= len(plan.new)
            plans.append(plan)
        try:
            results = await self._store.append_parts(
                [(p.subject, p.state.last_seq, [env for env, _ in p.new]) for p in plans]
            )
        except Exception:
            for plan in plans:
                if plan.new:  # the append may or may not have landed: reload next time
                    self.cache.drop(plan.key)
            raise
        conflicts = 0
        for plan, result in zip(plans, results, strict=True):
            if isinstance(result, ConcurrencyConflict):
                conflicts += 1
                self.cache.drop(plan.key)
                continue
            final = plan.state
            for rec, (_, fingerprint) in zip(result, plan.new, strict=True):
                final = plan.kind.evolve(final, rec, fingerprint)
            if plan.new:
                self._stats.events_appended += len(plan.new)
                self.cache.put(plan.key, final)
            await self._finish(plan.kind, plan.items, plan.outcomes, final)
            _consume(groups, plan)
        if any(p.new for p in plans):
            self._stats.appends += 1
        self._stats.conflicts += conflicts
        return conflicts

    async def _ensure_loaded(self, groups: dict[AggregateKey, list[_Item]]) -> None:
        """Load (concurrently) the aggregates not in the cache. One that cannot be loaded is
        left out of this batch (its commands are not acked and come back) without holding up
        the others."""
        missing = [key for key in groups if self.cache.get(key) is None]
        if not missing:
            return
        states = await asyncio.gather(*(self._load(key) for key in missing), return_exceptions=True)
        for key, state in zip(missing, states, strict=True):
            if isinstance(state, BaseException):
                if not isinstance(state, Exception):
                    raise state
                log.error("partition %d: loading %s %s failed: %r", self.partition, *key, state)
                del groups[key]
            else:
                self.cache.put(key, state)

    def _decide(self, key: AggregateKey, items: list[_Item], budget: int) -> _Plan:
        """Decide ``items`` in order against the cached state, up to ``budget`` new events
        (at least one command)."""
        kind = self._kinds[key[0]]
        state = self.cache.get(key)
        working = state
        new: list[tuple[EventEnvelope, str]] = []
        # a rejection, or the command id to look up (with whether it was a replay)
        outcomes: list[Rejected | tuple[str, bool]] = []
        now = datetime.now(UTC)
        for item in items:
            env = item.envelope
            outcome = kind.handle(working, env.command, env.command_id)
            if isinstance(outcome, Decided):
                if env.expires_at is not None and env.expires_at < now:
                    # Already-applied commands still replay; a new one is not applied late.
                    outcome = Refused(CommandExpired(env.command_id))
                elif len(new) + len(outcome.events) > budget and (outcomes or budget < MAX_BATCH):
                    break  # the rest in the next batch (a batch takes at least one command)
            match outcome:
                case Refused(error=error):
                    outcomes.append(rejected_from(env.command_id, error))
                case Replayed():
                    outcomes.append((env.command_id, True))
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
                        working = kind.evolve(
                            working,
                            RecordedEvent.model_construct(seq=0, envelope=envelope),
                            fingerprint,
                        )
                        new.append((envelope, fingerprint))
                    outcomes.append((env.command_id, False))
        return _Plan(
            key=key,
            kind=kind,
            subject=self._layout.event_subject(*key),
            state=state,
            items=items[: len(outcomes)],
            new=new,
            outcomes=outcomes,
        )

    async def _refuse_malformed(self, msg: Msg, exc: Exception) -> None:
        log.warning("partition %d: malformed command dropped: %s", self.partition, exc)
        self._stats.commands[("unknown", "malformed")] += 1
        reply_to = (msg.headers or {}).get(REPLY_HEADER, "")
        if reply_to.startswith(REPLY_PREFIX):
            reply = Rejected(command_id="", reason="invalid_command", message=str(exc)[:500])
            await self._nc.publish(reply_to, reply.model_dump_json().encode())
        await msg.term()

    async def _load(self, key: AggregateKey) -> Any:
        self._stats.loads += 1
        # Consistent: a follower's stale history could turn into a wrong rejection (not_found,
        # redemption_not_found) that no append expectation would catch.
        history = await self._store.load(self._layout.event_subject(*key), consistent=True)
        return self._kinds[key[0]].fold(key[1], history)

    async def _finish(
        self,
        kind: _VoucherKind | _WalletKind,
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
            reply_to = (item.msg.headers or {}).get(REPLY_HEADER, "")
            if reply_to.startswith(REPLY_PREFIX):
                await self._nc.publish(reply_to, reply.model_dump_json().encode())
            await item.msg.ack()
