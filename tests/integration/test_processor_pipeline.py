"""The processor's pipeline: while one append is in flight, the commands that arrive are
decided against the outcome it will have and go out as the next append once it is
acknowledged, expecting its last sequence; if the append in flight fails or conflicts, those
commands are decided again against the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pytest
from nats.aio.client import Client

from tests.integration.test_eventstore import redeemed
from tests.integration.test_processor_batch import ADMIN, CUSTOMER, on_stream, processor_for
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import (
    Append,
    EventStoreUnavailable,
    JetStreamEventStore,
    PartResult,
)
from voucher_ledger.commands.processor import PartitionProcessor
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher

Parts = list[tuple[str, int, int]]  # (subject, expected last subject sequence, events)


class Gate:
    """Holds the event store's appends while closed, and records each one's parts."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.calls: list[Parts] = []
        self.fail_next = False
        self._open = asyncio.Event()
        self._open.set()
        self._held = asyncio.Event()
        append_parts = store.append_parts

        async def gated(parts: Sequence[Append]) -> list[PartResult]:
            self.calls.append([(s, expected, len(events)) for s, expected, events in parts])
            self._held.set()
            await self._open.wait()
            if self.fail_next:
                self.fail_next = False
                raise EventStoreUnavailable("append to the gate timed out")
            return await append_parts(parts)

        store.append_parts = gated  # type: ignore[method-assign]

    def close(self) -> None:
        self._open.clear()
        self._held.clear()

    async def held(self) -> None:
        """Until an append is waiting at the closed gate."""
        await asyncio.wait_for(self._held.wait(), 10)

    def open(self) -> None:
        self._open.set()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


@dataclass
class Held:
    """A running processor of one code's partition, the code issued, and the append of its
    first redemption (customer c1) held at the gate."""

    gate: Gate
    proc: PartitionProcessor
    subject: str
    issued: Accepted
    first: asyncio.Future[object]


class HoldFirst(Protocol):
    async def __call__(self, code: str, cap: int, *, fail: bool = False) -> Held: ...


@pytest.fixture
async def hold_first(
    nc: Client, bus: CommandBus, applied: StreamsSpec, store: JetStreamEventStore
) -> AsyncIterator[HoldFirst]:
    """Start the processor of a code's partition (one per test), issue the code with ``cap``,
    and hold c1's append at the gate (``fail``: it fails when let through)."""
    tasks: list[asyncio.Task[None]] = []

    async def start(code: str, cap: int, *, fail: bool = False) -> Held:
        gate = Gate(store)
        proc = processor_for(nc, applied, store, applied.layout.partition_of(code))
        tasks.append(asyncio.create_task(proc.run()))
        issued = await bus.send(
            IssueVoucher(code=code, credit_baisa=100, max_redemptions=cap), actor=ADMIN
        )
        assert isinstance(issued, Accepted)
        gate.close()
        gate.fail_next = fail
        first = redeem(bus, code, "c1")
        await gate.held()
        return Held(gate, proc, applied.layout.voucher_subject(code), issued, first)

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def redeem(bus: CommandBus, code: str, customer: str) -> asyncio.Future[object]:
    return asyncio.ensure_future(
        bus.send(RedeemVoucher(code=code, customer_id=customer), actor=CUSTOMER, timeout=20)
    )


async def test_commands_arriving_during_an_append_are_decided_ahead_and_sent_next(
    bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec, hold_first: HoldFirst
) -> None:
    code = "PIPE-AHEAD"
    held = await hold_first(code, cap=5)
    gate, proc, subject, first = held.gate, held.proc, held.subject, held.first
    later = [redeem(bus, code, f"c{i}") for i in range(2, 8)]
    # Decided while the first append is held: c1 counts against the cap already.
    await until(lambda: proc.decided_ahead == 6)
    assert not first.done()
    assert not any(f.done() for f in later)
    assert len(gate.calls) == 2  # the issue, and c1's append at the gate

    gate.open()
    one = await first
    rest = await asyncio.gather(*later)

    assert isinstance(one, Accepted)
    accepted = [r for r in rest if isinstance(r, Accepted)]
    refused = [r for r in rest if isinstance(r, Rejected)]
    assert len(accepted) == 4
    assert [r.reason for r in refused] == ["cap_reached", "cap_reached"]
    # The next append went out as soon as c1's was stored, expecting c1's sequence.
    assert gate.calls[2:] == [[(subject, one.seq, 4)]], gate.calls
    assert sorted(r.seq for r in accepted) == list(range(one.seq + 1, one.seq + 5))
    assert len(await on_stream(store, applied, code)) == 5
    assert proc.decided_ahead == 0


async def test_a_conflict_in_flight_sends_the_commands_decided_after_it_back_to_be_decided(
    bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec, hold_first: HoldFirst
) -> None:
    code = "PIPE-STALE"
    held = await hold_first(code, cap=3)
    gate, proc, subject, issued, first = held.gate, held.proc, held.subject, held.issued, held.first
    # Behind the processor's back, another writer takes a slot: c1's append will conflict.
    await store.append(subject, issued.seq, [redeemed(code, "sneaky")])
    later = [redeem(bus, code, f"c{i}") for i in range(2, 5)]
    # Decided against c1's expected outcome: c2 and c3 take the last slots, c4 is refused.
    await until(lambda: proc.decided_ahead == 3)

    gate.open()
    replies = [await first, *await asyncio.gather(*later)]

    # All four decided again after a reload, in arrival order: the sneaky redemption counts.
    assert [type(r).__name__ for r in replies] == ["Accepted", "Accepted", "Rejected", "Rejected"]
    assert all(r.reason == "cap_reached" for r in replies[2:] if isinstance(r, Rejected))
    assert await on_stream(store, applied, code) == ["sneaky", "c1", "c2"]
    assert proc.decided_ahead == 0


async def test_a_failed_append_in_flight_sends_the_commands_decided_after_it_back(
    bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec, hold_first: HoldFirst
) -> None:
    code = "PIPE-FAIL"
    # c1's append fails: not acked, c1 comes back later
    held = await hold_first(code, cap=2, fail=True)
    gate, proc, subject, issued, first = held.gate, held.proc, held.subject, held.issued, held.first
    later = [redeem(bus, code, f"c{i}") for i in range(2, 5)]
    await until(lambda: proc.decided_ahead == 3)

    gate.open()
    replies = await asyncio.gather(*later)

    # Decided again from the stream, where c1 is not: c2 and c3 take the two slots.
    assert [type(r).__name__ for r in replies] == ["Accepted", "Accepted", "Rejected"]
    assert await on_stream(store, applied, code) == ["c2", "c3"]
    assert [parts[0][:2] for parts in gate.calls[1:]] == [
        (subject, issued.seq),  # c1's, failed
        (subject, issued.seq),  # c2 and c3, after a reload: not c1's expected outcome
    ]
    first.cancel()
