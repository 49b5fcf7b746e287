"""The JetStream event store against a real nats-server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.store import ConcurrencyConflict, TransientAppendError
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import Actor, EventEnvelope, VoucherIssued, VoucherRedeemed

ACTOR = Actor(sub="tester", role="superadmin")


def issued(code: str, command_id: str = "c-issue") -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate_id=code,
        occurred_at=datetime.now(UTC),
        actor=ACTOR,
        command_id=command_id,
        event=VoucherIssued(
            code=code,
            credit_baisa=5000,
            description="d",
            active=True,
            max_redemptions=0,
            change="created",
        ),
    )


def redeemed(code: str, customer: str) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate_id=code,
        occurred_at=datetime.now(UTC),
        actor=ACTOR,
        command_id=f"c-{customer}",
        event=VoucherRedeemed(
            code=code, customer_id=customer, redemption_id=f"r-{customer}", credit_baisa=5000
        ),
    )


async def test_single_append_records_sequence_and_loads_back(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    subject = applied.layout.voucher_subject("WELCOME50")
    recorded = await store.append(subject, 0, [issued("WELCOME50")])
    assert [r.seq for r in recorded] == [1]
    history = await store.load(subject)
    assert history == recorded


async def test_batch_append_is_contiguous_and_matches_stored_sequences(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    a = applied.layout.voucher_subject("AAA")
    b = applied.layout.voucher_subject("BBB")
    await store.append(b, 0, [issued("BBB")])
    batch = [issued("AAA")] + [redeemed("AAA", f"cust{i}") for i in range(40)]
    recorded = await store.append(a, 0, batch)
    assert [r.seq for r in recorded] == list(range(2, 43))
    loaded = await store.load(a)
    assert [r.seq for r in loaded] == [r.seq for r in recorded]
    assert [r.envelope.event_id for r in loaded] == [e.event_id for e in batch]


async def test_wrong_expected_sequence_is_a_conflict_and_stores_nothing(
    store: JetStreamEventStore, applied: StreamsSpec, nc: Client
) -> None:
    subject = applied.layout.voucher_subject("CONFLICT1")
    await store.append(subject, 0, [issued("CONFLICT1")])
    with pytest.raises(ConcurrencyConflict):
        await store.append(subject, 0, [redeemed("CONFLICT1", "x")])
    with pytest.raises(ConcurrencyConflict):  # the atomic batch form: all or nothing
        await store.append(subject, 0, [redeemed("CONFLICT1", "y"), redeemed("CONFLICT1", "z")])
    history = await store.load(subject)
    assert len(history) == 1
    assert await store.last_sequence() == 1


async def test_concurrent_appends_with_same_expectation_only_one_wins(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    import asyncio

    subject = applied.layout.voucher_subject("RACE1")
    await store.append(subject, 0, [issued("RACE1")])
    results = await asyncio.gather(
        *(store.append(subject, 1, [redeemed("RACE1", f"c{i}")]) for i in range(50)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert len(wins) == 1
    assert len(conflicts) == 49
    assert len(await store.load(subject)) == 2


async def test_load_pages_through_long_histories(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    subject = applied.layout.voucher_subject("LONG1")
    batch = [issued("LONG1")] + [redeemed("LONG1", f"c{i}") for i in range(249)]
    await store.append(subject, 0, batch)
    loaded = await store.load(subject, page=7)
    assert [r.envelope.event_id for r in loaded] == [e.event_id for e in batch]
    tail = await store.load(subject, after_seq=245, page=7)
    assert [r.seq for r in tail] == [246, 247, 248, 249, 250]


async def test_load_of_unknown_subject_is_empty(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    assert await store.load(applied.layout.voucher_subject("NOPE1")) == []


async def test_event_stream_refuses_message_deletion(nc: Client, applied: StreamsSpec) -> None:
    import json

    store = JetStreamEventStore(nc, applied.event_stream)
    await store.append(applied.layout.voucher_subject("KEEP1"), 0, [issued("KEEP1")])
    msg = await nc.request(
        f"$JS.API.STREAM.MSG.DELETE.{applied.event_stream}", json.dumps({"seq": 1}).encode()
    )
    assert "error" in json.loads(msg.data)
    msg = await nc.request(f"$JS.API.STREAM.PURGE.{applied.event_stream}", b"")
    assert "error" in json.loads(msg.data)
    assert len(await store.load(applied.layout.voucher_subject("KEEP1"))) == 1


async def _leader_gets_during(nc: Client, stream: str, action: object) -> int:
    """How many ``$JS.API.STREAM.MSG.GET`` requests (answered by the stream leader only) were
    made while ``action`` ran: a plain subscriber receives a copy of every API request."""
    seen: list[str] = []

    async def spy(msg: object) -> None:
        seen.append("get")

    sub = await nc.subscribe(f"$JS.API.STREAM.MSG.GET.{stream}", cb=spy)
    await nc.flush()
    await action()  # type: ignore[operator]
    await nc.flush()
    await sub.unsubscribe()
    return len(seen)


async def test_consistent_load_on_a_single_replica_stream_asks_no_leader(
    store: JetStreamEventStore, applied: StreamsSpec, nc: Client
) -> None:
    """One replica: the direct get is answered by the stream's only server, so a consistent load
    costs no extra leader request (a new aggregate: one direct get); it still sees every
    acknowledged append."""
    subject = applied.layout.voucher_subject("R1LOAD")
    loaded: list[list[object]] = []

    async def loads() -> None:
        loaded.append(list(await store.load(subject, consistent=True)))
        [first] = await store.append(subject, 0, [issued("R1LOAD")])
        await store.append(subject, first.seq, [redeemed("R1LOAD", "c1")])
        loaded.append(list(await store.load(subject, consistent=True)))

    assert await _leader_gets_during(nc, applied.event_stream, loads) == 0
    assert loaded[0] == []
    assert len(loaded[1]) == 2


async def test_too_many_atomic_batches_in_flight_is_transient_not_a_failure(
    store: JetStreamEventStore, applied: StreamsSpec, nc: Client
) -> None:
    """nats-server refuses a new atomic batch while too many are open on the stream (50 by
    default); nothing of it is stored, so the append is a transient refusal to retry after a
    backoff (its own class, not a conflict: the subject did not move), not an error (which left
    the commands unacknowledged until ack_wait brought them back)."""
    import json

    subject = applied.layout.voucher_subject("INFLIGHT")
    refused = None
    for i in range(500):  # open batches and leave them open (they time out on the server)
        msg = await nc.request(
            subject,
            b"{}",
            timeout=5,
            headers={"Nats-Batch-Id": f"hold{i}-{uuid.uuid4().hex}", "Nats-Batch-Sequence": "1"},
        )
        if msg.data:
            refused = json.loads(msg.data)
            break
    assert refused is not None, "the server never refused a new batch"
    assert refused["error"]["err_code"] == 10210, refused
    with pytest.raises(TransientAppendError) as refusal:
        await store.append(subject, 0, [issued("INFLIGHT"), redeemed("INFLIGHT", "c1")])
    assert not isinstance(refusal.value, ConcurrencyConflict)
    assert await store.load(subject) == []


async def test_close_unsubscribes_the_reply_subscription_of_the_loads(
    store: JetStreamEventStore, applied: StreamsSpec, nc: Client
) -> None:
    """A load subscribes once to a wildcard inbox for the direct gets' replies; ``close``
    unsubscribes it, so a store made per request (the ``?at=`` reads) leaves nothing behind on
    the server. The server itself says so: a request to that inbox has no responders."""
    import nats.errors

    subject = applied.layout.voucher_subject("CLOSED1")
    await store.append(subject, 0, [issued("CLOSED1")])
    replies: list[str] = []

    async def spy(msg: Msg) -> None:
        replies.append(msg.reply)

    sub = await nc.subscribe(f"$JS.API.DIRECT.GET.{applied.event_stream}", cb=spy)
    await nc.flush()
    assert len(await store.load(subject)) == 1
    await nc.flush()
    await sub.unsubscribe()
    [reply] = replies
    probe = reply.rsplit(".", 1)[0] + ".probe"  # another token of the same wildcard inbox
    with pytest.raises(nats.errors.TimeoutError):  # subscribed: received, never answered
        await nc.request(probe, b"", timeout=0.2)

    await store.close()

    with pytest.raises(nats.errors.NoRespondersError):  # nobody subscribes to it any more
        await nc.request(probe, b"", timeout=5)
    assert len(await store.load(subject)) == 1  # a later load subscribes again
    await store.close()
