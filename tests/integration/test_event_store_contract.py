"""The event store contract (``voucher_ledger.commands.store.EventStore``), run against every
implementation: the JetStream store on the real nats-server of ``tests/conftest.py`` and the
in-memory store. What the processor relies on: per-subject expectations checked at append time,
each part of an append all or none and independent of the others, one global sequence."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from nats.aio.client import Client

from tests.integration.test_eventstore import issued, redeemed
from voucher_ledger.commands.eventstore import ATOMIC_MIN
from voucher_ledger.commands.memory_store import MemoryEventStore
from voucher_ledger.commands.store import (
    MAX_BATCH,
    ConcurrencyConflict,
    EventStore,
    TransientAppendError,
)
from voucher_ledger.jetstream.layout import Layout


@dataclass
class Harness:
    """One implementation under test: the store, the subject of a code, and a way to make the
    store's next append of a subject refused for a passing reason."""

    store: EventStore
    layout: Layout
    make_transient: Callable[[str], Awaitable[None]]

    def subject(self, code: str) -> str:
        return self.layout.voucher_subject(code)


async def _jetstream_transient(nc: Client, subject: str) -> None:
    """Open atomic batches on ``subject`` and leave them open until nats-server refuses a new
    one (too many in flight, 10210): the next atomic append is refused too."""
    for i in range(500):
        msg = await nc.request(
            subject,
            b"{}",
            timeout=5,
            headers={"Nats-Batch-Id": f"hold{i}-{uuid.uuid4().hex}", "Nats-Batch-Sequence": "1"},
        )
        if msg.data:
            return
    raise AssertionError("the server never refused a new batch")


@pytest.fixture(params=["jetstream", "memory"])
def h(request: pytest.FixtureRequest) -> Harness:
    """The implementation under test (one run of every test per implementation)."""
    if request.param == "memory":
        memory = MemoryEventStore()

        async def refuse(subject: str) -> None:
            memory.refuse_next(subject, TransientAppendError(f"{subject}: test", code=10210))

        layout = Layout(prefix=f"t{uuid.uuid4().hex[:12]}", partitions=8)
        return Harness(memory, layout, refuse)
    nc: Client = request.getfixturevalue("nc")
    applied = request.getfixturevalue("applied")
    store = request.getfixturevalue("store")

    async def provoke(subject: str) -> None:
        await _jetstream_transient(nc, subject)

    return Harness(store, applied.layout, provoke)


async def test_an_append_is_recorded_with_stream_sequences_and_loads_back(h: Harness) -> None:
    subject = h.subject("APPEND1")
    recorded = await h.store.append(subject, 0, [issued("APPEND1"), redeemed("APPEND1", "c1")])
    assert [r.seq for r in recorded] == [1, 2]
    assert await h.store.load(subject) == recorded
    assert await h.store.load(subject, consistent=True) == recorded
    assert [r.envelope.event.type for r in recorded] == ["voucher.issued", "voucher.redeemed"]


async def test_sequences_are_global_contiguous_and_in_order_per_subject(h: Harness) -> None:
    a, b = h.subject("ORDA"), h.subject("ORDB")
    [a1] = await h.store.append(a, 0, [issued("ORDA")])
    [b1] = await h.store.append(b, 0, [issued("ORDB")])
    a2, a3 = await h.store.append(a, a1.seq, [redeemed("ORDA", "c1"), redeemed("ORDA", "c2")])
    [b2] = await h.store.append(b, b1.seq, [redeemed("ORDB", "c1")])
    assert [a1.seq, b1.seq, a2.seq, a3.seq, b2.seq] == [1, 2, 3, 4, 5]
    assert [r.seq for r in await h.store.load(a)] == [1, 3, 4]
    assert [r.seq for r in await h.store.load(b)] == [2, 5]
    assert await h.store.last_sequence() == 5


async def test_a_wrong_expectation_is_a_conflict_and_stores_nothing(h: Harness) -> None:
    subject = h.subject("EXPECT1")
    [first] = await h.store.append(subject, 0, [issued("EXPECT1")])
    for stale in (0, first.seq + 1):
        with pytest.raises(ConcurrencyConflict):
            await h.store.append(subject, stale, [redeemed("EXPECT1", "x")])
        with pytest.raises(ConcurrencyConflict):  # several events: all or nothing
            await h.store.append(
                subject, stale, [redeemed("EXPECT1", "y"), redeemed("EXPECT1", "z")]
            )
    assert await h.store.load(subject) == [first]
    assert await h.store.last_sequence() == first.seq
    # The right expectation still lands.
    [second] = await h.store.append(subject, first.seq, [redeemed("EXPECT1", "x")])
    assert second.seq == first.seq + 1


async def test_the_expectation_is_per_subject_not_the_stream_sequence(h: Harness) -> None:
    a, b = h.subject("PERSUBJA"), h.subject("PERSUBJB")
    [a1] = await h.store.append(a, 0, [issued("PERSUBJA")])
    await h.store.append(b, 0, [issued("PERSUBJB")])
    # a's last sequence is 1 although the stream is at 2.
    [a2] = await h.store.append(a, a1.seq, [redeemed("PERSUBJA", "c1")])
    assert a2.seq == 3


async def test_append_many_is_all_or_none_across_subjects(h: Harness) -> None:
    a, b = h.subject("MANYA"), h.subject("MANYB")
    await h.store.append(b, 0, [issued("MANYB")])
    with pytest.raises(ConcurrencyConflict):  # b's expectation (0) is stale
        await h.store.append_many([(a, 0, [issued("MANYA")]), (b, 0, [redeemed("MANYB", "x")])])
    assert await h.store.load(a) == []
    assert await h.store.last_sequence() == 1
    landed = await h.store.append_many(
        [(a, 0, [issued("MANYA")]), (b, 1, [redeemed("MANYB", "x"), redeemed("MANYB", "y")])]
    )
    assert [[r.seq for r in part] for part in landed] == [[2], [3, 4]]


async def test_parts_are_independent_a_stale_part_does_not_refuse_the_others(h: Harness) -> None:
    fresh = [h.subject(f"PART{i}") for i in range(3)]
    stale = h.subject("PARTSTALE")
    await h.store.append(stale, 0, [issued("PARTSTALE")])

    results = await h.store.append_parts(
        [
            (fresh[0], 0, [issued("PART0")]),
            (stale, 0, [redeemed("PARTSTALE", "late")]),  # the subject is at 1
            (fresh[1], 0, [issued("PART1"), redeemed("PART1", "c1")]),
            (fresh[2], 0, [issued("PART2")]),
        ]
    )

    assert isinstance(results[1], ConcurrencyConflict)
    for subject, result in zip(fresh, [results[0], results[2], results[3]], strict=True):
        assert isinstance(result, list)
        assert await h.store.load(subject) == result
    assert [r.seq for r in await h.store.load(stale)] == [1]
    assert await h.store.last_sequence() == 1 + 4


async def test_empty_parts_store_nothing_and_come_back_empty(h: Harness) -> None:
    a, b = h.subject("EMPTYA"), h.subject("EMPTYB")
    assert await h.store.append_parts([(a, 0, [])]) == [[]]
    assert await h.store.append_parts([]) == []
    assert await h.store.append_many([(a, 0, [])]) == [[]]
    assert await h.store.last_sequence() == 0
    # An empty part next to others: its expectation is not even looked at.
    results = await h.store.append_parts([(a, 7, []), (b, 0, [issued("EMPTYB")])])
    assert results[0] == []
    assert isinstance(results[1], list)
    assert [r.seq for r in results[1]] == [1]


async def test_a_batch_larger_than_the_atomic_minimum_is_stored_whole_and_in_order(
    h: Harness,
) -> None:
    subject = h.subject("BIGPART")
    events = [issued("BIGPART")] + [redeemed("BIGPART", f"c{i}") for i in range(ATOMIC_MIN + 5)]
    [result] = await h.store.append_parts([(subject, 0, events)])
    assert isinstance(result, list)
    assert [r.seq for r in result] == list(range(1, len(events) + 1))
    loaded = await h.store.load(subject)
    assert [r.envelope.event_id for r in loaded] == [e.event_id for e in events]
    # Several parts adding up to more than the atomic minimum, each with its own outcome.
    subjects = [h.subject(f"MANYPARTS{i}") for i in range(ATOMIC_MIN + 2)]
    results = await h.store.append_parts(
        [(s, 0, [issued(f"MANYPARTS{i}")]) for i, s in enumerate(subjects)]
    )
    assert sorted(r[0].seq for r in results if isinstance(r, list)) == list(
        range(len(events) + 1, len(events) + 1 + len(subjects))
    )


async def test_append_many_refuses_more_than_the_batch_limit(h: Harness) -> None:
    subject = h.subject("TOOMANY")
    events = [issued("TOOMANY")] + [redeemed("TOOMANY", f"c{i}") for i in range(MAX_BATCH)]
    with pytest.raises(ValueError, match="at most"):
        await h.store.append_many([(subject, 0, events)])
    with pytest.raises(ValueError, match="twice"):
        await h.store.append_many([(subject, 0, events[:1]), (subject, 0, events[1:2])])
    assert await h.store.last_sequence() == 0


async def test_load_after_a_sequence_returns_only_the_later_events(h: Harness) -> None:
    subject = h.subject("AFTER1")
    other = h.subject("AFTER2")
    recorded = await h.store.append(subject, 0, [issued("AFTER1"), redeemed("AFTER1", "c1")])
    await h.store.append(other, 0, [issued("AFTER2")])
    more = await h.store.append(subject, recorded[-1].seq, [redeemed("AFTER1", "c2")])
    assert await h.store.load(subject, after_seq=recorded[0].seq) == [recorded[1], *more]
    assert await h.store.load(subject, after_seq=recorded[1].seq) == more
    assert await h.store.load(subject, after_seq=more[0].seq) == []
    assert await h.store.load(h.subject("NEVER")) == []


async def test_last_sequence_is_zero_on_an_empty_stream_then_the_last_stored(h: Harness) -> None:
    assert await h.store.last_sequence() == 0
    subject = h.subject("LAST1")
    recorded = await h.store.append(subject, 0, [issued("LAST1"), redeemed("LAST1", "c1")])
    assert await h.store.last_sequence() == recorded[-1].seq
    with pytest.raises(ConcurrencyConflict):
        await h.store.append(subject, 0, [redeemed("LAST1", "c2")])
    assert await h.store.last_sequence() == recorded[-1].seq


async def test_a_transient_refusal_is_its_own_error_never_a_conflict(h: Harness) -> None:
    subject = h.subject("TRANSIENT")
    await h.make_transient(subject)
    with pytest.raises(TransientAppendError) as refused:
        await h.store.append(subject, 0, [issued("TRANSIENT"), redeemed("TRANSIENT", "c1")])
    assert not isinstance(refused.value, ConcurrencyConflict)
    assert await h.store.load(subject) == []


async def test_a_transient_refusal_of_a_part_is_that_part_s_result(h: Harness) -> None:
    subject = h.subject("TRANSPART")
    other = h.subject("TRANSOTHER")
    await h.make_transient(subject)
    events = [issued("TRANSPART")] + [redeemed("TRANSPART", f"c{i}") for i in range(ATOMIC_MIN)]
    results = await h.store.append_parts([(subject, 0, events), (other, 0, [issued("TRANSOTHER")])])
    assert isinstance(results[0], TransientAppendError)
    assert not isinstance(results[0], ConcurrencyConflict)
    assert isinstance(results[1], list)
    assert await h.store.load(subject) == []
    assert await h.store.load(other) == results[1]


async def test_close_then_load_still_reads(h: Harness) -> None:
    subject = h.subject("CLOSE1")
    recorded = await h.store.append(subject, 0, [issued("CLOSE1")])
    assert await h.store.load(subject) == recorded
    await h.store.close()
    await h.store.close()  # twice is fine
    assert await h.store.load(subject) == recorded
    await h.store.close()
