"""Atomic batches over several subjects, and the event store's group commit (append_parts)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.client import Client

from tests.conftest import stream_state
from tests.integration.test_eventstore import issued, redeemed
from voucher_ledger.commands.eventstore import (
    ATOMIC_MIN,
    MAX_BATCH,
    Append,
    ConcurrencyConflict,
    JetStreamEventStore,
)
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import RecordedEvent


def spy_on_atomic_appends(store: JetStreamEventStore) -> list[tuple[int, str]]:
    """Record each atomic append ``store`` makes: (subjects in it, "stored" or "refused")."""
    calls: list[tuple[int, str]] = []
    append_many = store.append_many

    async def spy(appends: Sequence[Append]) -> list[list[RecordedEvent]]:
        try:
            recorded = await append_many(appends)
        except ConcurrencyConflict:
            calls.append((len(appends), "refused"))
            raise
        calls.append((len(appends), "stored"))
        return recorded

    store.append_many = spy  # type: ignore[method-assign]
    return calls


async def test_one_atomic_batch_spans_subjects_each_with_its_own_expectation(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    a, b, c = (applied.layout.voucher_subject(code) for code in ("MULTI-A", "MULTI-B", "MULTI-C"))
    await store.append(b, 0, [issued("MULTI-B")])

    recorded = await store.append_many(
        [
            (a, 0, [issued("MULTI-A"), redeemed("MULTI-A", "x")]),
            (b, 1, [redeemed("MULTI-B", "y")]),
            (c, 0, [issued("MULTI-C")]),
        ]
    )

    assert [[r.seq for r in part] for part in recorded] == [[2, 3], [4], [5]]
    assert await store.load(a) == recorded[0]
    assert [r.seq for r in await store.load(b)] == [1, 4]
    assert await store.load(c) == recorded[2]


async def test_a_wrong_expectation_on_one_subject_refuses_the_whole_batch(
    store: JetStreamEventStore, applied: StreamsSpec, nc: Client
) -> None:
    a, b = applied.layout.voucher_subject("REF-A"), applied.layout.voucher_subject("REF-B")
    await store.append(a, 0, [issued("REF-A")])
    await store.append(b, 0, [issued("REF-B")])
    before = await stream_state(nc, applied.event_stream)

    try:
        await store.append_many(
            [
                (a, 1, [redeemed("REF-A", "x"), redeemed("REF-A", "y")]),
                (b, 1, [redeemed("REF-B", "z")]),
            ]
        )
    except ConcurrencyConflict:
        pass
    else:  # pragma: no cover - the assertion below says what went wrong
        raise AssertionError("a stale expectation in the batch must refuse it")
    # b's expectation (1) is stale: b is at 2.
    assert await stream_state(nc, applied.event_stream) == before
    assert [r.seq for r in await store.load(a)] == [1]


async def test_group_commit_gives_each_part_its_own_outcome(
    store: JetStreamEventStore, applied: StreamsSpec, nc: Client
) -> None:
    """While one append is in flight, two more callers' parts queue up and go out together as
    one atomic batch; the one stale part refuses that batch (nothing of it is stored), then each
    part is sent by itself: the stale one is refused alone, the others land once."""
    fresh = [applied.layout.voucher_subject(f"GRP{i}") for i in range(ATOMIC_MIN + 1)]
    stale = applied.layout.voucher_subject("GSTALE")
    await store.append(stale, 0, [issued("GSTALE")])
    calls = spy_on_atomic_appends(store)

    in_flight, first, second = await asyncio.gather(
        store.append_parts([(fresh[0], 0, [issued("GRP0")])]),
        store.append_parts([(s, 0, [issued(f"GRP{i + 1}")]) for i, s in enumerate(fresh[1:4])]),
        store.append_parts(
            [(stale, 0, [redeemed("GSTALE", "late")])]  # stale: the subject is at 1
            + [(s, 0, [issued(f"GRP{i + 4}")]) for i, s in enumerate(fresh[4:])]
        ),
    )

    assert isinstance(second[0], ConcurrencyConflict)
    assert calls[:2] == [(1, "stored"), (len(fresh), "refused")], calls
    assert sorted(calls[2:]) == [(1, "refused")] + [(1, "stored")] * (len(fresh) - 1), calls
    landed = [*in_flight, *first, *second[1:]]
    for subject, part in zip(fresh, landed, strict=True):
        assert isinstance(part, list)
        assert len(part) == 1
        assert await store.load(subject) == part
    assert [r.seq for r in await store.load(stale)] == [1]
    state = await stream_state(nc, applied.event_stream)
    assert state["messages"] == 1 + len(fresh)


async def test_group_commit_splits_groups_over_the_batch_limit(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    per_part = MAX_BATCH // 2 + 1  # two parts do not fit one atomic batch
    subjects = [applied.layout.voucher_subject(f"BIG{i}") for i in range(3)]
    parts = [
        (s, 0, [issued(f"BIG{i}")] + [redeemed(f"BIG{i}", f"c{j}") for j in range(per_part - 1)])
        for i, s in enumerate(subjects)
    ]

    results = await store.append_parts(parts)

    for subject, result in zip(subjects, results, strict=True):
        assert isinstance(result, list)
        assert len(result) == per_part
        assert await store.load(subject) == result
