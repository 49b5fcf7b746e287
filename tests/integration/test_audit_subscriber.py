"""Audit subscribers against a real nats-server: order, durable resume, filters, the head."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from tests.conftest import wait_until
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    RedemptionReversed,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
)
from voucher_ledger.published.subscriber import (
    AuditRecord,
    AuditSubscriber,
    AuditSubscriberError,
    wallet_account_token,
    wallet_subject,
)

ACTOR = Actor(sub="auditor-test", role="superadmin")


def envelope(code: str, event: object, at: datetime | None = None) -> EventEnvelope:
    return EventEnvelope.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "aggregate_id": code,
            "occurred_at": at or datetime.now(UTC),
            "actor": ACTOR,
            "command_id": uuid.uuid4().hex,
            "event": event,
        }
    )


def issued(code: str) -> EventEnvelope:
    return envelope(
        code,
        VoucherIssued(
            code=code,
            credit_baisa=5000,
            description="d",
            active=True,
            max_redemptions=0,
            change="created",
        ),
    )


def redeemed(code: str, customer: str) -> EventEnvelope:
    return envelope(
        code,
        VoucherRedeemed(
            code=code, customer_id=customer, redemption_id=f"r-{customer}", credit_baisa=5000
        ),
    )


class Ledger:
    """Appends events to the test stream the way processors do (per-code expected sequence)."""

    def __init__(self, store: JetStreamEventStore, spec: StreamsSpec) -> None:
        self.store = store
        self.spec = spec
        self.last: dict[str, int] = {}
        self.appended: list[tuple[int, str]] = []  # (seq, event_id) in stream order

    async def append(self, code: str, envelopes: list[EventEnvelope]) -> None:
        subject = self.spec.layout.voucher_subject(code)
        recorded = await self.store.append(subject, self.last.get(code, 0), envelopes)
        self.last[code] = recorded[-1].seq
        self.appended += [(r.seq, r.envelope.event_id) for r in recorded]

    async def traffic(self, codes: list[str], customers: int) -> None:
        """Interleaved codes, single appends and atomic batches."""
        for code in codes:
            if code not in self.last:
                await self.append(code, [issued(code)])
        for n in range(customers):
            for i, code in enumerate(codes):
                if (n + i) % 3 == 0:
                    await self.append(
                        code, [redeemed(code, f"{code}-{n}a"), redeemed(code, f"{code}-{n}b")]
                    )
                else:
                    await self.append(code, [redeemed(code, f"{code}-{n}")])


@pytest.fixture
def ledger(store: JetStreamEventStore, applied: StreamsSpec) -> Ledger:
    return Ledger(store, applied)


def ids(records: list[AuditRecord]) -> list[tuple[int, str]]:
    return [(r.seq, r.envelope.event_id) for r in records]


async def read_all(sub: AuditSubscriber) -> list[AuditRecord]:
    async with sub:
        return [record async for record in sub]


async def test_subscriber_started_before_the_first_event_and_one_started_later_agree(
    nc: Client, applied: StreamsSpec, ledger: Ledger
) -> None:
    prefix = applied.layout.prefix
    early = AuditSubscriber(nc, prefix, durable="early", batch=7)  # small batches: many fetches
    await early.start()
    assert early.head == 0
    seen: list[AuditRecord] = []

    async def consume() -> None:
        async for record in early:
            seen.append(record)

    task = asyncio.create_task(consume())
    await ledger.traffic(["AAA1", "BBB2", "CCC3"], customers=8)
    total = len(ledger.appended)
    await wait_until(lambda: len(seen) >= total, what=f"{total} records live")
    early.stop()
    await asyncio.wait_for(task, 10)
    await early.close()

    late = await read_all(AuditSubscriber(nc, prefix, from_seq=1, follow=False))
    assert ids(seen) == ids(late) == ledger.appended
    assert [r.seq for r in late] == list(range(1, total + 1))
    assert {r.subject for r in late} == {
        applied.layout.voucher_subject(c) for c in ("AAA1", "BBB2", "CCC3")
    }
    assert all(r.recorded.seq == r.seq for r in late)
    assert isinstance(late[0].envelope.event, VoucherIssued)


@pytest.mark.parametrize("use_reset", [True, False], ids=["consumer-reset", "recreate"])
async def test_durable_resumes_with_no_gap_and_no_duplicate(
    nc: Client, applied: StreamsSpec, ledger: Ledger, use_reset: bool
) -> None:
    prefix = applied.layout.prefix
    await ledger.traffic(["RES1", "RES2"], customers=10)
    first_total = len(ledger.appended)

    def subscriber() -> AuditSubscriber:
        sub = AuditSubscriber(nc, prefix, durable="billing-export", follow=False)
        sub.use_reset = use_reset  # False: the path for nats-server < 2.14
        return sub

    got: list[AuditRecord] = []
    async with subscriber() as sub:  # the whole batch is fetched, 7 are consumed
        assert not sub.resumed
        async for record in sub:
            got.append(record)
            if len(got) == 7:
                break
    assert ids(got) == ledger.appended[:7]

    await ledger.traffic(["RES1", "RES3"], customers=3)  # more events while it is stopped
    async with subscriber() as sub:
        assert sub.resumed
        async for record in sub:
            got.append(record)
            if len(got) == first_total + 2:
                break
    assert ids(got) == ledger.appended[: first_total + 2]

    rest = await read_all(subscriber())
    got += rest
    assert ids(got) == ledger.appended  # every record exactly once, in order
    assert rest, "the third session had records left"

    assert await read_all(subscriber()) == []  # nothing left: a no-follow run ends at once


async def test_a_record_whose_processing_failed_comes_again(
    nc: Client, applied: StreamsSpec, ledger: Ledger
) -> None:
    prefix = applied.layout.prefix
    await ledger.traffic(["FAIL1"], customers=5)
    taken: list[int] = []

    async def process_until_third_fails() -> None:
        async with AuditSubscriber(nc, prefix, durable="flaky", follow=False) as sub:
            async for record in sub:
                taken.append(record.seq)
                if len(taken) == 3:
                    raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await process_until_third_fails()
    again = await read_all(AuditSubscriber(nc, prefix, durable="flaky", follow=False))
    assert [r.seq for r in again] == [seq for seq, _ in ledger.appended][2:]


async def test_no_follow_stops_at_the_head_it_started_with(
    nc: Client, applied: StreamsSpec, ledger: Ledger
) -> None:
    prefix = applied.layout.prefix
    await ledger.traffic(["HEAD1"], customers=4)
    head = len(ledger.appended)
    sub = AuditSubscriber(nc, prefix, follow=False)
    async with sub:
        assert sub.head == head
        await ledger.traffic(["HEAD1"], customers=2)  # after the start: not for this run
        records = [r async for r in sub]
    assert ids(records) == ledger.appended[:head]


async def test_filters_by_subject_and_type(
    nc: Client, applied: StreamsSpec, ledger: Ledger
) -> None:
    prefix = applied.layout.prefix
    await ledger.traffic(["FLT1", "FLT2"], customers=3)
    await ledger.append("FLT1", [envelope("FLT1", VoucherRevoked(code="FLT1"))])
    one_code = await read_all(
        AuditSubscriber(
            nc, prefix, filter_subject=applied.layout.voucher_subject("FLT1"), follow=False
        )
    )
    assert {r.envelope.aggregate_id for r in one_code} == {"FLT1"}
    assert one_code[-1].envelope.event.type == "voucher.revoked"
    only_issued = await read_all(
        AuditSubscriber(nc, prefix, types=["voucher.issued", "voucher.revoked"], follow=False)
    )
    assert [r.envelope.event.type for r in only_issued] == [
        "voucher.issued",
        "voucher.issued",
        "voucher.revoked",
    ]
    # A durable that filters by type acks what it skips, so it does not see it again.
    typed = await read_all(
        AuditSubscriber(nc, prefix, durable="typed", types=["voucher.issued"], follow=False)
    )
    assert len(typed) == 2
    await ledger.traffic(["FLT3"], customers=1)
    typed = await read_all(
        AuditSubscriber(nc, prefix, durable="typed", types=["voucher.issued"], follow=False)
    )
    assert [r.envelope.aggregate_id for r in typed] == ["FLT3"]


async def test_since_starts_at_a_time(nc: Client, applied: StreamsSpec, ledger: Ledger) -> None:
    prefix = applied.layout.prefix
    await ledger.traffic(["OLD1"], customers=2)
    before = len(ledger.appended)
    await ledger.traffic(["NEW1"], customers=2)
    stored = await nc.jetstream().get_msg(applied.event_stream, ledger.appended[before][0])
    assert stored.time is not None  # the server's time, cut to microseconds: not after it
    records = await read_all(AuditSubscriber(nc, prefix, since=stored.time, follow=False))
    assert ids(records) == ledger.appended[before:]


async def test_bad_arguments_are_refused_before_anything_is_created(
    nc: Client, applied: StreamsSpec
) -> None:
    prefix = applied.layout.prefix
    with pytest.raises(ValueError, match="not both"):
        AuditSubscriber(nc, prefix, from_seq=1, since=datetime.now(UTC))
    with pytest.raises(ValueError, match="at least 1"):
        AuditSubscriber(nc, prefix, from_seq=0)
    with pytest.raises(ValueError, match="timezone"):
        AuditSubscriber(nc, prefix, since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="durable name"):
        AuditSubscriber(nc, prefix, durable="a.b")
    with pytest.raises(ValueError, match="unknown event type"):
        AuditSubscriber(nc, prefix, types=["voucher.exploded"])
    with pytest.raises(ValueError, match="not a subject under"):
        AuditSubscriber(nc, prefix, filter_subject="other.events.>")
    with pytest.raises(ValueError, match="not a subject under"):
        AuditSubscriber(nc, prefix, filter_subject=f"{prefix}.events.>.x")
    with pytest.raises(ValueError, match="invalid subject prefix"):
        AuditSubscriber(nc, "Bad.Prefix")
    with pytest.raises(AuditSubscriberError, match="not found"):
        await AuditSubscriber(nc, "nosuchprefix").start()


async def test_a_durable_keeps_its_filter(nc: Client, applied: StreamsSpec, ledger: Ledger) -> None:
    prefix = applied.layout.prefix
    await ledger.traffic(["KEEP1"], customers=1)
    await read_all(AuditSubscriber(nc, prefix, durable="keeper", follow=False))
    other = AuditSubscriber(
        nc,
        prefix,
        durable="keeper",
        filter_subject=applied.layout.voucher_subject("KEEP1"),
        follow=False,
    )
    with pytest.raises(AuditSubscriberError, match="use another durable name"):
        await other.start()
    await other.close()


async def test_ephemeral_consumers_are_deleted_on_close(nc: Client, applied: StreamsSpec) -> None:
    sub = AuditSubscriber(nc, applied.layout.prefix, follow=False)
    await read_all(sub)
    js = nc.jetstream()
    names = [c.name for c in await js.consumers_info(applied.event_stream)]
    assert sub.consumer_name not in names


def test_wallet_subjects_encode_the_customer_id() -> None:
    assert wallet_account_token("u-42") == "dS00Mg"
    assert wallet_account_token("a.b*>") == "YS5iKj4"  # never a subject wildcard
    assert wallet_subject("ledger", "ü") == "ledger.events.wallet.w7w"
    assert wallet_subject("ledger", "u-42") == Layout("ledger", 8).wallet_subject("u-42")
    with pytest.raises(ValueError, match="empty"):
        wallet_account_token("")


def test_records_fold_like_stored_events() -> None:
    env = envelope(
        "ABC",
        RedemptionReversed(code="ABC", customer_id="c", redemption_id="r", reason="test"),
    )
    record = AuditRecord(seq=9, subject="p.events.voucher.ABC", envelope=env)
    assert record.recorded.seq == 9
    assert record.recorded.envelope == env
