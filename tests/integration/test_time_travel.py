"""Time travel: a voucher folded from the stream as of a past sequence or time equals what the
processors answered at that moment."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.conftest import HostFactory
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.commands import (
    IssueVoucher,
    RedeemVoucher,
    ReverseRedemption,
    RevokeVoucher,
)
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import VoucherCommandT, VoucherView
from voucher_ledger.projections.timetravel import BadTimestamp, parse_timestamp, voucher_as_of

ADMIN = Actor(sub="admin", role="superadmin")


async def accepted(bus: CommandBus, command: VoucherCommandT) -> Accepted:
    reply = await bus.send(command, actor=ADMIN)
    assert isinstance(reply, Accepted), reply
    return reply


async def test_state_at_each_past_sequence_and_time_is_what_it_was(
    make_host: HostFactory, bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    await make_host()
    code = "TIME-1"
    steps: list[Accepted] = []
    first_issue = IssueVoucher(
        code=code, credit_baisa=5000, description="first", active=True, max_redemptions=2
    )
    steps.append(await accepted(bus, first_issue))
    other = await accepted(bus, IssueVoucher(code="OTHER-1", credit_baisa=1000))
    steps.append(await accepted(bus, IssueVoucher(code=code, credit_baisa=8000, description="2")))
    steps.append(await accepted(bus, RedeemVoucher(code=code, customer_id="u-1")))
    steps.append(await accepted(bus, RedeemVoucher(code=code, customer_id="u-2")))
    steps.append(
        await accepted(bus, ReverseRedemption(code=code, customer_id="u-1", reason="refund"))
    )
    steps.append(await accepted(bus, RevokeVoucher(code=code)))
    history = await store.load(applied.layout.voucher_subject(code))
    assert [r.seq for r in history] == [reply.seq for reply in steps]

    for step, (reply, recorded) in enumerate(zip(steps, history, strict=True)):
        assert isinstance(reply.voucher, VoucherView)
        by_seq = await voucher_as_of(store, applied.layout, code, seq=reply.seq)
        at = recorded.envelope.occurred_at
        by_time = await voucher_as_of(store, applied.layout, code, at=at)
        assert by_seq is not None, step
        assert by_seq.view == reply.voucher, step  # what the processor answered then
        assert by_time == by_seq, step

    first, last = history[0], history[-1]
    assert await voucher_as_of(store, applied.layout, code, seq=first.seq - 1) is None
    before = first.envelope.occurred_at - timedelta(microseconds=1)
    assert await voucher_as_of(store, applied.layout, code, at=before) is None

    # A sequence between two of this code's events (another code's event): the earlier state.
    between = await voucher_as_of(store, applied.layout, code, seq=other.seq)
    assert between is not None
    assert between.view == steps[0].voucher

    revoked = await voucher_as_of(store, applied.layout, code)
    assert revoked is not None
    assert revoked.view.revoked
    assert revoked.revoked_at == last.envelope.occurred_at
    assert revoked.detail()["times_redeemed"] == 1
    assert revoked.detail()["accepting_redemptions"] is False
    redeemed_twice = await voucher_as_of(store, applied.layout, code, seq=steps[3].seq)
    assert redeemed_twice is not None
    assert redeemed_twice.detail() == {
        "code": code,
        "credit_omr": 8,
        "credit_baisa": 8000,
        "description": "2",
        "active": True,
        "max_redemptions": 2,
        "times_redeemed": 2,
        "created_at": first.envelope.occurred_at,
        "updated_at": history[3].envelope.occurred_at,
        "starts_at": None,
        "expires_at": None,
        "plans": None,
        "min_order_omr": 0,
        "min_order_baisa": 0,
        "new_organizations_only": False,
        "credit_valid_for": None,
        "revoked": False,
        "revoked_at": None,
        "accepting_redemptions": False,  # at its cap
        "last_seq": steps[3].seq,
        # issue #21: what it gives
        "kind": "credit",
        "percent_off": None,
        "amount_off_omr": None,
        "amount_off_baisa": None,
        "applies_to": None,
        "duration": None,
        "summary": "8 OMR credit",
    }
    assert await voucher_as_of(store, applied.layout, "NEVER-1") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-21T12:00:00Z", "2026-11-21T12:00:00+00:00"),
        ("2026-11-21T16:00:00+04:00", "2026-11-21T12:00:00+00:00"),
        ("2026-11-21T16:00:00 04:00", "2026-11-21T12:00:00+00:00"),  # a '+' a query ate
        ("2026-11-21T12:00:00.123456Z", "2026-11-21T12:00:00.123456+00:00"),
    ],
)
def test_timestamps_are_read_in_utc(raw: str, expected: str) -> None:
    assert parse_timestamp(raw).isoformat() == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "yesterday",
        "2026-11-21",
        "2026-11-21T12:00:00",
        "2026-13-01T00:00:00Z",
        "１２３",
        "9" * 80,
    ],
)
def test_bad_timestamps_say_what_is_expected(raw: str) -> None:
    with pytest.raises(BadTimestamp, match=r"ISO 8601|time zone"):
        parse_timestamp(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        # the ends themselves: PostgreSQL's -infinity and infinity to asyncpg
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.999999+00:00",
    ],
)
def test_a_moment_outside_years_1_to_9999_in_utc_is_a_bad_timestamp_not_a_crash(raw: str) -> None:
    with pytest.raises(BadTimestamp, match="years 1-9999"):
        parse_timestamp(raw)


@pytest.mark.parametrize(
    "raw", ["0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999998Z", "9999-12-31T23:59:59Z"]
)
def test_the_moments_next_to_the_ends_are_good_timestamps(raw: str) -> None:
    assert parse_timestamp(raw) == datetime.fromisoformat(raw)
