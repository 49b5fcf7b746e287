"""Issue #20 in the pure voucher decider: a window (``starts_at`` inclusive, ``expires_at``
exclusive) checked against the decision's moment, eligibility rules checked against what the
checkout says, both kept on update unless given or cleared, and v1 events upcast to v2."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from voucher_ledger.ledger.commands import IssueVoucher, RedeemVoucher
from voucher_ledger.ledger.errors import (
    InvalidInput,
    NotEligible,
    VoucherExpired,
    VoucherNotStarted,
)
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    RecordedEvent,
    VoucherIssued,
    decode_envelope,
    decode_plain,
    encode_envelope,
)
from voucher_ledger.ledger.voucher import (
    Decided,
    Policy,
    Refused,
    VoucherState,
    evolve,
    fold,
    handle,
    initial_state,
)

CODE = "RULES-1"
T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
START = T0 + timedelta(days=1)
END = T0 + timedelta(days=2)


class Book:
    def __init__(self) -> None:
        self.state: VoucherState = initial_state(CODE)
        self.seq = itertools.count(1)
        self.history: list[RecordedEvent] = []

    def run(self, command: IssueVoucher | RedeemVoucher, now: datetime = T0) -> Decided | Refused:
        command_id = f"c-{len(self.history)}-{command.type}-{now.timestamp()}"
        outcome = handle(self.state, command, command_id, Policy(), now)
        assert not isinstance(outcome, tuple)
        if isinstance(outcome, Decided):
            for event in outcome.events:
                rec = RecordedEvent(
                    seq=next(self.seq),
                    envelope=EventEnvelope(
                        event_id=f"e-{len(self.history)}",
                        aggregate_id=CODE,
                        occurred_at=now,
                        actor=Actor(sub="a", role="superadmin"),
                        command_id=command_id,
                        command_fingerprint=command.fingerprint(),
                        event=event,
                    ),
                )
                self.history.append(rec)
                self.state = evolve(self.state, rec, command.fingerprint())
            return outcome
        assert isinstance(outcome, Refused)
        return outcome


def redeem(customer: str, **facts: object) -> RedeemVoucher:
    return RedeemVoucher(code=CODE, customer_id=customer, **facts)  # type: ignore[arg-type]


def refused_with(outcome: object, error: type[Exception]) -> Exception:
    assert isinstance(outcome, Refused), outcome
    assert isinstance(outcome.error, error), outcome.error
    return outcome.error


def test_the_window_is_start_inclusive_end_exclusive_at_the_decisions_moment() -> None:
    book = Book()
    book.run(IssueVoucher(code=CODE, credit_baisa=1000, starts_at=START, expires_at=END))
    early = refused_with(
        book.run(redeem("u1"), START - timedelta(microseconds=1)), VoucherNotStarted
    )
    assert early.reason == "not_started"  # type: ignore[attr-defined]
    assert "2030-06-02T12:00:00Z" in str(early)
    assert isinstance(book.run(redeem("u1"), START), Decided)
    assert isinstance(book.run(redeem("u2"), END - timedelta(microseconds=1)), Decided)
    late = refused_with(book.run(redeem("u3"), END), VoucherExpired)
    assert late.reason == "voucher_expired"  # type: ignore[attr-defined]
    assert book.state.times_redeemed == 2
    # the view's refusal is the preview's reason at each moment
    view = book.state.view()
    assert view.refusal_at(START - timedelta(seconds=1)) == "not_started"
    assert view.refusal_at(START) is None
    assert view.refusal_at(END) == "expired"


def test_an_update_keeps_what_it_omits_replaces_what_it_gives_and_clears_what_it_names() -> None:
    book = Book()
    book.run(
        IssueVoucher(
            code=CODE,
            credit_baisa=1000,
            starts_at=START,
            expires_at=END,
            plans=["business", "business", "starter"],
            min_order_baisa=5000,
            new_organizations_only=True,
        )
    )
    rules = book.state.rules
    assert rules.plans == ("business", "starter")  # listed once each
    book.run(IssueVoucher(code=CODE, credit_baisa=2000))
    assert book.state.rules == rules
    book.run(IssueVoucher(code=CODE, credit_baisa=2000, expires_at=END + timedelta(days=1)))
    assert (book.state.rules.starts_at, book.state.rules.expires_at) == (
        START,
        END + timedelta(days=1),
    )
    book.run(IssueVoucher(code=CODE, credit_baisa=2000, clear=["starts_at", "plans"]))
    assert (book.state.rules.starts_at, book.state.rules.plans) == (None, None)
    assert book.state.rules.min_order_baisa == 5000
    # an end at or before the start kept from before is refused, and changes nothing
    book.run(IssueVoucher(code=CODE, credit_baisa=2000, starts_at=START))
    before = book.state
    error = refused_with(
        book.run(IssueVoucher(code=CODE, credit_baisa=2000, expires_at=START)), InvalidInput
    )
    assert "after starts_at" in str(error)
    assert book.state is before
    # fold from the stream gives the same state as the live evolve
    assert fold(CODE, book.history).rules == book.state.rules


@pytest.mark.parametrize(
    ("rules", "refused", "accepted", "rule"),
    [
        ({"plans": ["business"]}, {"plan_id": "starter"}, {"plan_id": "business"}, "plans"),
        ({"plans": ["business"]}, {}, {"plan_id": "business"}, "plans"),
        (
            {"min_order_baisa": 12_000},
            {"order_total_baisa": 11_999},
            {"order_total_baisa": 12_000},
            "min_order_omr",
        ),
        ({"min_order_baisa": 12_000}, {}, {"order_total_baisa": 50_000}, "min_order_omr"),
        (
            {"new_organizations_only": True},
            {"new_organization": False},
            {"new_organization": True},
            "new_organizations_only",
        ),
        (
            {"new_organizations_only": True},
            {},
            {"new_organization": True},
            "new_organizations_only",
        ),
    ],
)
def test_each_eligibility_rule_refuses_without_burning_and_accepts_when_met(
    rules: dict[str, object], refused: dict[str, object], accepted: dict[str, object], rule: str
) -> None:
    book = Book()
    book.run(IssueVoucher(code=CODE, credit_baisa=1000, max_redemptions=1, **rules))  # type: ignore[arg-type]
    error = refused_with(book.run(redeem("u1", **refused)), NotEligible)
    assert error.rule == rule  # type: ignore[attr-defined]
    assert book.state.times_redeemed == 0
    assert isinstance(book.run(redeem("u1", **accepted)), Decided)
    assert book.state.times_redeemed == 1


def test_the_fingerprints_of_commands_without_the_new_fields_are_unchanged() -> None:
    """A command id stored before issue #20 still matches its retry after the upgrade."""
    old_issue = (
        '{"code":"RULES-1","type":"issue_voucher","credit_baisa":1000,'
        '"description":null,"active":null,"max_redemptions":null}'
    )
    assert (
        IssueVoucher(code=CODE, credit_baisa=1000).fingerprint()
        == (hashlib.sha256(old_issue.encode()).hexdigest()[:32])
    )
    old_redeem = '{"code":"RULES-1","type":"redeem_voucher","customer_id":"u1"}'
    digest = hashlib.sha256(old_redeem.encode()).hexdigest()[:32]
    assert redeem("u1").fingerprint() == digest
    # the checkout's facts may differ on a retry of the same order: the same redemption
    assert redeem("u1", plan_id="x", order_total_baisa=1, new_organization=False).fingerprint() == (
        digest
    )
    assert IssueVoucher(code=CODE, credit_baisa=1000, clear=["plans"]).fingerprint() != (
        IssueVoucher(code=CODE, credit_baisa=1000).fingerprint()
    )


def test_a_v1_issued_event_upcasts_to_the_current_version_with_no_window_and_no_rules() -> None:
    v2 = EventEnvelope(
        event_id="e",
        aggregate_id=CODE,
        occurred_at=T0,
        actor=Actor(sub="a", role="superadmin"),
        command_id="c",
        event=VoucherIssued(
            code=CODE,
            credit_baisa=1000,
            description="",
            active=True,
            max_redemptions=0,
            change="created",
        ),
    )
    doc = json.loads(encode_envelope(v2))
    assert doc["event"]["version"] == 3  # v3 (issue #21) adds the discount terms
    v1 = json.loads(json.dumps(doc))
    v1["event"] = {
        k: v
        for k, v in doc["event"].items()
        if k
        not in (
            "starts_at",
            "expires_at",
            "plans",
            "min_order_baisa",
            "new_organizations_only",
            "discount",
        )
    }
    v1["event"]["version"] = 1
    raw = json.dumps(v1).encode()
    assert decode_envelope(raw) == v2
    assert decode_plain(raw) == v2.model_dump()
    state = fold(CODE, [RecordedEvent(seq=1, envelope=decode_envelope(raw))])
    assert state.view().refusal_at(T0) is None
