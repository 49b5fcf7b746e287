"""Issue #20 in the pure deciders: the wallet is an Organization's account; without a
membership claim it belongs to the user of its first order that did not fail, and a voucher
redeems once per Organization and once per user."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from tests.unit.test_wallet import Wallet, open_order, settle
from voucher_ledger.ledger.commands import (
    FailOrder,
    IssueVoucher,
    OpenOrder,
    RedeemVoucher,
    ReverseRedemption,
)
from voucher_ledger.ledger.errors import AlreadyRedeemed, NotMember
from voucher_ledger.ledger.events import Actor, EventEnvelope, RecordedEvent
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
from voucher_ledger.ledger.wallet import fold as wallet_fold


def opened_by(order_id: str, user: str, by_claim: bool = False) -> OpenOrder:
    return open_order(order_id, 9).model_copy(update={"user_id": user, "member_by_claim": by_claim})


def fail(order_id: str) -> FailOrder:
    return FailOrder(customer_id="alice", order_id=order_id, reason="invalid_promo", message="x")


def refusal(outcome: object) -> Exception:
    assert isinstance(outcome, Refused), outcome
    return outcome.error


def test_the_first_user_whose_order_does_not_fail_owns_the_account() -> None:
    w = Wallet()  # the account "alice" (an Organization's id)
    assert isinstance(w.apply(opened_by("o1", "ann")), Decided)
    assert w.state.owner == "ann"
    # another user without a claim: 403, nothing appended
    before = len(w.history)
    error = refusal(w.apply(opened_by("o2", "bob")))
    assert isinstance(error, NotMember)
    assert error.reason == "not_member"
    assert len(w.history) == before
    # ann's checkout is refused (its order failed): she owns nothing, so bob may open
    w.apply(fail("o1"))
    assert w.state.owner is None
    assert isinstance(w.apply(opened_by("o3", "bob")), Decided)
    w.apply(settle("o3", grant_omr=10))
    assert (w.state.owner, w.state.orders["o3"].status) == ("bob", "completed")
    assert isinstance(refusal(w.apply(opened_by("o4", "ann"))), NotMember)
    # a user whose token names the Organization is a member without owning it
    assert isinstance(w.apply(opened_by("o5", "cat", by_claim=True)), Decided)
    w.apply(fail("o5"))
    assert w.state.owner == "bob"  # a claim member's order never moves ownership
    assert wallet_fold("alice", w.history).owner == "bob"


def test_an_order_without_a_user_is_the_accounts_own_users_as_before_issue_20() -> None:
    w = Wallet()
    w.apply(open_order("o1", 0))
    assert (w.state.owner, w.state.orders["o1"].user_id) == ("alice", "alice")
    assert w.history[0].envelope.event.user_id == "alice"  # type: ignore[union-attr]


class Book:
    def __init__(self, code: str) -> None:
        self.code = code
        self.state: VoucherState = initial_state(code)
        self.seq = itertools.count(1)
        self.history: list[RecordedEvent] = []

    def run(self, command: IssueVoucher | RedeemVoucher | ReverseRedemption) -> object:
        command_id = f"c{len(self.history)}-{command.fingerprint()}"
        outcome = handle(self.state, command, command_id, Policy())
        if isinstance(outcome, Decided):
            for event in outcome.events:
                rec = RecordedEvent(
                    seq=next(self.seq),
                    envelope=EventEnvelope(
                        event_id=command_id,
                        aggregate_id=self.code,
                        occurred_at=datetime.now(UTC),
                        actor=Actor(sub="s", role="member"),
                        command_id=command_id,
                        command_fingerprint=command.fingerprint(),
                        event=event,
                    ),
                )
                self.history.append(rec)
                self.state = evolve(self.state, rec, command.fingerprint())
        return outcome


def test_a_code_redeems_once_per_organization_and_once_per_user() -> None:
    book = Book("ORG-ONCE")
    book.run(IssueVoucher(code="ORG-ONCE", credit_baisa=1000, max_redemptions=100))
    assert isinstance(
        book.run(RedeemVoucher(code="ORG-ONCE", customer_id="acme", user_id="u1")), Decided
    )
    # another user of the same Organization
    same_org = refusal(book.run(RedeemVoucher(code="ORG-ONCE", customer_id="acme", user_id="u2")))
    assert isinstance(same_org, AlreadyRedeemed)
    # the same user for another Organization (no farming by opening Organizations)
    same_user = refusal(book.run(RedeemVoucher(code="ORG-ONCE", customer_id="beta", user_id="u1")))
    assert isinstance(same_user, AlreadyRedeemed)
    assert "by this user" in str(same_user)
    assert book.state.times_redeemed == 1
    # a reversal frees both the Organization and the user
    book.run(ReverseRedemption(code="ORG-ONCE", customer_id="acme", reason="checkout failed"))
    assert isinstance(
        book.run(RedeemVoucher(code="ORG-ONCE", customer_id="beta", user_id="u1")), Decided
    )
    assert fold("ORG-ONCE", book.history).users == book.state.users
    assert dict(book.state.users) == {"u1": "beta"}


def test_v1_wallet_and_redemption_events_upcast_to_the_accounts_own_user_and_no_expiry() -> None:
    """Stored before issue #20: the account was the user, nothing expired, no lots."""
    import json

    from voucher_ledger.ledger.events import decode_envelope, decode_plain

    def stored(aggregate: str, event: dict[str, object]) -> bytes:
        return json.dumps(
            {
                "event_id": "e-1",
                "aggregate": aggregate,
                "aggregate_id": "u-1",
                "occurred_at": "2025-01-01T00:00:00Z",
                "actor": {"sub": "u-1", "role": "member"},
                "command_id": "c-1",
                "event": {"version": 1, "customer_id": "u-1", **event},
            }
        ).encode()

    line = {"kind": "plan", "id": "p", "name": "P", "amount_baisa": 1000}
    cases = [
        (
            stored("wallet", {"type": "order.opened", "order_id": "o", "tenant_id": "t",
                              "plan_id": "p", "apps": [], "addons": [], "promo_code": None,
                              "lines": [line], "total_baisa": 1000}),
            {"version": 3, "user_id": "u-1", "member_by_claim": False, "discount_baisa": 0},
        ),
        (
            stored("voucher", {"type": "voucher.redeemed", "code": "C-1", "redemption_id": "r",
                               "credit_baisa": 5}),
            {"version": 3, "user_id": "u-1", "credit_expires_at": None, "order": None},
        ),
        (
            stored("wallet", {"type": "wallet.credit_granted", "redemption_id": "r",
                              "code": "C-1", "order_id": "o", "amount_baisa": 5}),
            {"version": 2, "expires_at": None},
        ),
        (
            stored("wallet", {"type": "wallet.credit_reserved", "order_id": "o",
                              "amount_baisa": 5}),
            {"version": 2, "lots": []},
        ),
    ]  # fmt: skip
    for raw, expected in cases:
        event = decode_envelope(raw).event.model_dump()
        assert {k: event[k] for k in expected} == expected, event["type"]
        assert decode_plain(raw)["event"] == event
