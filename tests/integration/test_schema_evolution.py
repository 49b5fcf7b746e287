"""Stored events outlive the code that wrote them: bytes written as an old producer wrote them
are read back through the current models, and replay goes through the upcasters."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client
from pydantic import ValidationError

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger import events
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    VoucherIssued,
    VoucherRedeemed,
    decode_envelope,
)
from voucher_ledger.ledger.voucher import fold
from voucher_ledger.projections.timetravel import voucher_as_of
from voucher_ledger.published.subscriber import AuditSubscriber, UndecodableEvent

# Exactly the bytes a v1 producer wrote (before envelopes carried a command fingerprint), in its
# own key order and spacing: never produced by today's models.
V1_ISSUED = (
    b'{"event_id": "0b9e7f0e-3c1f-4d1a-9d55-000000000001", "aggregate": "voucher", '
    b'"aggregate_id": "LEGACY-V1", "occurred_at": "2025-01-02T03:04:05.123456Z", '
    b'"actor": {"sub": "legacy-admin", "role": "superadmin"}, "command_id": "legacy-issue", '
    b'"event": {"type": "voucher.issued", "version": 1, "code": "LEGACY-V1", '
    b'"credit_baisa": 7000, "description": "from the old days", "active": true, '
    b'"max_redemptions": 3, "change": "created"}}'
)
V1_REDEEMED = (
    b'{"event": {"version": 1, "type": "voucher.redeemed", "code": "LEGACY-V1", '
    b'"customer_id": "u-1", "redemption_id": "r-legacy-1", "credit_baisa": 7000}, '
    b'"event_id": "0b9e7f0e-3c1f-4d1a-9d55-000000000002", "aggregate_id": "LEGACY-V1", '
    b'"occurred_at": "2025-01-03T00:00:00+00:00", "command_id": "legacy-redeem", '
    b'"actor": {"role": "member", "sub": "u-1"}}'
)


async def publish_raw(nc: Client, subject: str, payload: bytes) -> int:
    ack = await nc.jetstream().publish(subject, payload)
    return int(ack.seq)


async def test_stored_v1_bytes_read_back_through_the_current_model(
    nc: Client, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    subject = applied.layout.voucher_subject("LEGACY-V1")
    s1 = await publish_raw(nc, subject, V1_ISSUED)
    s2 = await publish_raw(nc, subject, V1_REDEEMED)

    issued = decode_envelope(V1_ISSUED)
    assert issued == EventEnvelope(
        event_id="0b9e7f0e-3c1f-4d1a-9d55-000000000001",
        aggregate_id="LEGACY-V1",
        occurred_at=datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        actor=Actor(sub="legacy-admin", role="superadmin"),
        command_id="legacy-issue",
        event=VoucherIssued(
            code="LEGACY-V1",
            credit_baisa=7000,
            description="from the old days",
            active=True,
            max_redemptions=3,
            change="created",
        ),
    )
    assert issued.command_fingerprint == ""  # the field did not exist yet: its default

    # The event store (processors, time travel) ...
    history = await store.load(subject)
    assert [r.seq for r in history] == [s1, s2]
    assert history[0].envelope == issued
    assert isinstance(history[1].envelope.event, VoucherRedeemed)
    state = fold("LEGACY-V1", history)
    assert (state.credit_baisa, state.times_redeemed, state.max_redemptions) == (7000, 1, 3)
    assert "u-1" in state.redemptions
    # ... the replayed receipts recompute the fingerprint the old producer did not store ...
    assert state.receipts["legacy-issue"].fingerprint
    # ... an audit subscriber ...
    async with AuditSubscriber(nc, applied.layout.prefix, follow=False) as sub:
        records = [r async for r in sub]
    assert [(r.seq, r.envelope) for r in records] == [(s1, issued), (s2, history[1].envelope)]
    # ... and time travel all read it.
    before = await voucher_as_of(store, applied.layout, "LEGACY-V1", seq=s1)
    assert before is not None
    assert before.view.times_redeemed == 0
    assert before.view.created_at == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


# A synthetic older schema: v0 of voucher.issued counted whole OMR and had no `change`.
V0_ISSUED: dict[str, Any] = {
    "event_id": "0b9e7f0e-3c1f-4d1a-9d55-0000000000a0",
    "aggregate": "voucher",
    "aggregate_id": "LEGACY-V0",
    "occurred_at": "2024-06-01T00:00:00Z",
    "actor": {"sub": "legacy-admin", "role": "superadmin"},
    "command_id": "legacy-v0",
    "event": {
        "type": "voucher.issued",
        "version": 0,
        "code": "LEGACY-V0",
        "credit_omr": 12,
        "description": "v0",
        "active": True,
        "max_redemptions": 0,
    },
}


def v0_to_v1(calls: list[int]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def upcast(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        out = {k: v for k, v in event.items() if k != "credit_omr"}
        out.update(version=1, credit_baisa=int(event["credit_omr"]) * 1000, change="created")
        return out

    return upcast


async def test_replay_goes_through_upcasters(
    nc: Client,
    store: JetStreamEventStore,
    applied: StreamsSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subject = applied.layout.voucher_subject("LEGACY-V0")
    seq = await publish_raw(nc, subject, json.dumps(V0_ISSUED).encode())
    prefix = applied.layout.prefix

    # Without an upcaster this build cannot read v0: the subscriber stops on it, unacknowledged.
    async def read_through() -> None:
        async with AuditSubscriber(nc, prefix, durable="evolving", follow=False) as sub:
            async for _ in sub:
                pass

    with pytest.raises(UndecodableEvent, match=r"no upcaster for voucher\.issued v0") as caught:
        await read_through()
    assert caught.value.seq == seq

    calls: list[int] = []
    monkeypatch.setitem(events.UPCASTERS, ("voucher.issued", 0), v0_to_v1(calls))

    # The same durable, with the upcaster registered (a newer build): it reads the event now.
    async with AuditSubscriber(nc, prefix, durable="evolving", follow=False) as sub:
        records = [r async for r in sub]
    assert [r.seq for r in records] == [seq]
    event = records[0].envelope.event
    assert isinstance(event, VoucherIssued)
    # v0 -> v1 (the test's upcaster) -> v2 (the build's: no window, no eligibility rules)
    assert (event.version, event.credit_baisa, event.change) == (3, 12000, "created")
    assert (event.starts_at, event.expires_at, event.plans) == (None, None, None)

    history = await store.load(subject)
    state = fold("LEGACY-V0", history)
    assert (state.issued, state.credit_baisa, state.description) == (True, 12000, "v0")
    as_of = await voucher_as_of(store, applied.layout, "LEGACY-V0", seq=seq)
    assert as_of is not None
    assert as_of.detail()["credit_omr"] == 12
    assert len(calls) == 3  # subscriber, load for fold, load for time travel: every replay


def test_a_newer_version_than_this_build_is_refused() -> None:
    raw = json.loads(V1_ISSUED)
    raw["event"]["version"] = 4
    with pytest.raises(events.UnknownEventVersion, match="newer than this build"):
        decode_envelope(json.dumps(raw).encode())


def test_the_rebuilds_plain_decoding_reads_old_bytes_and_upcasts_as_the_models_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``decode_plain`` (rebuild's bulk path) gives the models' fields as plain dicts for v1
    bytes in another key order, with the defaults of fields they lack, and goes through the
    upcasters for older versions; what the models refuse, it refuses."""
    for raw in (V1_ISSUED, V1_REDEEMED):
        assert events.decode_plain(raw) == decode_envelope(raw).model_dump()
    assert events.decode_plain(V1_ISSUED)["command_fingerprint"] == ""

    completed = json.loads(V1_REDEEMED)
    completed["aggregate"] = "wallet"
    completed["event"] = {
        "type": "order.completed",
        "version": 1,
        "customer_id": "u-1",
        "order_id": "o-1",
        "paid_by_credit": True,
        "credit_applied_baisa": 1000,
        "amount_paid_baisa": 0,
    }
    raw = json.dumps(completed).encode()
    plain = events.decode_plain(raw)
    assert plain == decode_envelope(raw).model_dump()
    assert plain["event"]["stripe_session_id"] is None

    old = json.dumps(V0_ISSUED).encode()
    with pytest.raises(events.UnknownEventVersion, match=r"no upcaster for voucher\.issued v0"):
        events.decode_plain(old)
    calls: list[int] = []
    monkeypatch.setitem(events.UPCASTERS, ("voucher.issued", 0), v0_to_v1(calls))
    plain = events.decode_plain(old)
    assert plain == decode_envelope(old).model_dump()
    assert (plain["event"]["version"], plain["event"]["credit_baisa"]) == (3, 12000)
    assert calls

    extra = json.loads(V1_ISSUED)
    extra["event"]["surprise"] = 1
    with pytest.raises(ValidationError):
        decode_envelope(json.dumps(extra).encode())
    with pytest.raises(ValidationError):
        events.decode_plain(json.dumps(extra).encode())
    wrong = json.loads(V1_ISSUED)
    wrong["event"]["credit_baisa"] = "a lot"
    with pytest.raises(ValidationError):
        events.decode_plain(json.dumps(wrong).encode())
