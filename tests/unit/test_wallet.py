"""The wallet decider: credit first, never negative, every movement an event, idempotent."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voucher_ledger.ledger.commands import (
    AbandonOrder,
    AttachSession,
    ConfirmPayment,
    FailOrder,
    Failure,
    Grant,
    GrantCredit,
    OpenOrder,
    PlaceOrder,
    QueryOrder,
    RecordInvoice,
    SettleOrder,
    WalletCommandT,
)
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    OrderLine,
    OrderPlaced,
    RecordedEvent,
)
from voucher_ledger.ledger.voucher import Decided, Refused, Replayed
from voucher_ledger.ledger.wallet import WalletState, evolve, fold, handle, initial_state

CUSTOMER = "alice"
OMR = 1000


class Wallet:
    """Applies commands like a processor: decide, then fold the events with stream seqs."""

    def __init__(self) -> None:
        self.state: WalletState = initial_state(CUSTOMER)
        self.history: list[RecordedEvent] = []

    def apply(self, command: WalletCommandT, command_id: str | None = None) -> object:
        command_id = command_id or uuid.uuid4().hex
        outcome = handle(self.state, command, command_id)
        if isinstance(outcome, Decided):
            for event in outcome.events:
                recorded = RecordedEvent(
                    seq=len(self.history) + 1,
                    envelope=EventEnvelope(
                        event_id=str(uuid.uuid4()),
                        aggregate="wallet",
                        aggregate_id=CUSTOMER,
                        occurred_at=datetime.now(UTC),
                        actor=Actor(sub=CUSTOMER, role="member"),
                        command_id=command_id,
                        command_fingerprint=command.fingerprint(),
                        event=event,
                    ),
                )
                self.history.append(recorded)
                self.state = evolve(self.state, recorded)
        return outcome

    def types(self) -> list[str]:
        return [r.envelope.event.type for r in self.history]


def open_order(order_id: str, total_omr: int) -> OpenOrder:
    return OpenOrder(
        customer_id=CUSTOMER,
        order_id=order_id,
        tenant_id="t1",
        plan_id="plan",
        lines=[OrderLine(kind="plan", id="plan", name="Plan", amount_baisa=total_omr * OMR)],
        total_baisa=total_omr * OMR,
    )


def settle(order_id: str, grant_omr: int = 0, payment: bool = True) -> SettleOrder:
    grant = (
        Grant(redemption_id=f"r-{order_id}", code="PROMO", amount_baisa=grant_omr * OMR)
        if grant_omr
        else None
    )
    return SettleOrder(
        customer_id=CUSTOMER, order_id=order_id, grant=grant, payment_available=payment
    )


def test_credit_covers_the_total_reserve_capture_complete() -> None:
    w = Wallet()
    w.apply(open_order("o1", 12))
    w.apply(settle("o1", grant_omr=50))
    assert w.types() == [
        "order.opened",
        "wallet.credit_granted",
        "wallet.credit_reserved",
        "wallet.credit_captured",
        "order.completed",
    ]
    assert (w.state.balance_baisa, w.state.reserved_baisa) == (38 * OMR, 0)
    order = w.state.orders["o1"]
    assert (order.status, order.paid_by_credit, order.credit_applied_baisa) == (
        "completed",
        True,
        12 * OMR,
    )


def interrupted(order_id: str) -> FailOrder:
    """What recovery sends for a checkout cut off while its order was still opened."""
    return FailOrder(
        customer_id=CUSTOMER,
        order_id=order_id,
        reason="interrupted",
        message="m",
        expected_status="opened",
    )


def grant_credit(order_id: str, grant_omr: int) -> GrantCredit:
    return GrantCredit(
        customer_id=CUSTOMER,
        order_id=order_id,
        grant=Grant(redemption_id=f"r-{order_id}", code="PROMO", amount_baisa=grant_omr * OMR),
    )


def test_a_free_order_granted_first_then_settles_with_one_event_each() -> None:
    """GrantCredit, then the same SettleOrder (still carrying the grant): one event per command,
    the same events in the same order as a settle that grants, the same state."""
    split, whole = Wallet(), Wallet()
    for w in (split, whole):
        w.apply(open_order("o1", 0))
    granted = split.apply(grant_credit("o1", 5), "grant-o1")
    assert isinstance(granted, Decided)
    assert [e.type for e in granted.events] == ["wallet.credit_granted"]
    settled = split.apply(settle("o1", grant_omr=5), "settle-o1")
    assert isinstance(settled, Decided)
    assert [e.type for e in settled.events] == ["order.completed"]
    whole.apply(settle("o1", grant_omr=5), "settle-o1")
    assert split.types() == whole.types()
    assert split.state.orders["o1"].status == whole.state.orders["o1"].status == "completed"
    assert (split.state.balance_baisa, split.state.available_baisa) == (5 * OMR, 5 * OMR)
    assert split.state.orders["o1"].redemption_id == "r-o1"


def test_grant_credit_is_idempotent_and_only_for_an_opened_order() -> None:
    w = Wallet()
    w.apply(open_order("o1", 0))
    w.apply(grant_credit("o1", 5), "grant-o1")
    again = w.apply(grant_credit("o1", 5), "grant-o1-retry")  # same redemption, new command id
    assert isinstance(again, Decided)
    assert again.events == []
    assert isinstance(w.apply(grant_credit("o1", 5), "grant-o1"), Replayed)
    assert w.state.balance_baisa == 5 * OMR
    w.apply(open_order("o2", 0))
    w.apply(
        FailOrder(customer_id=CUSTOMER, order_id="o2", reason="interrupted", message="m"),
        "fail-o2",
    )
    refused = w.apply(grant_credit("o2", 7), "grant-o2")
    assert isinstance(refused, Refused)
    assert refused.error.reason == "order_closed"
    unknown = w.apply(grant_credit("nope", 7))
    assert isinstance(unknown, Refused)
    assert unknown.error.reason == "order_not_found"
    assert w.state.balance_baisa == 5 * OMR


def test_wallet_refusals_make_no_reference_cycles() -> None:
    """As for vouchers (test_decider): a refusal keeps no traceback, so no frames, no cycle."""
    w = Wallet()
    gc.collect()
    gc.disable()
    try:
        kept = [w.apply(grant_credit(f"nope-{i}", 7)) for i in range(50)]
        assert all(isinstance(outcome, Refused) for outcome in kept)
        del kept
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_an_order_failed_between_grant_and_settle_takes_the_grant_back() -> None:
    """What recovery does to a checkout interrupted after its grant: revoke it, free the slot."""
    w = Wallet()
    w.apply(open_order("o1", 0))
    w.apply(grant_credit("o1", 5), "grant-o1")
    w.apply(
        interrupted("o1"),
        "fail-o1",
    )
    assert w.types()[-2:] == ["wallet.grant_revoked", "order.failed"]
    assert w.state.balance_baisa == 0
    assert w.state.orders["o1"].release_slot is True


def test_partial_credit_reserves_and_asks_for_the_rest() -> None:
    w = Wallet()
    w.apply(open_order("o1", 29))
    w.apply(settle("o1", grant_omr=5))
    order = w.state.orders["o1"]
    assert (order.status, order.credit_applied_baisa, order.amount_due_baisa) == (
        "awaiting_payment",
        5 * OMR,
        24 * OMR,
    )
    assert (w.state.available_baisa, w.state.reserved_baisa) == (0, 5 * OMR)
    w.apply(AttachSession(customer_id=CUSTOMER, order_id="o1", session_id="cs_1", session_url="u"))
    w.apply(
        ConfirmPayment(
            customer_id=CUSTOMER, order_id="o1", session_id="cs_1", amount_paid_baisa=24 * OMR
        ),
        "stripe-evt_1",
    )
    assert w.state.orders["o1"].status == "completed"
    assert (w.state.balance_baisa, w.state.reserved_baisa) == (0, 0)
    # The same Stripe event again replays; nothing new is appended.
    before = len(w.history)
    again = w.apply(
        ConfirmPayment(
            customer_id=CUSTOMER, order_id="o1", session_id="cs_1", amount_paid_baisa=24 * OMR
        ),
        "stripe-evt_1",
    )
    assert isinstance(again, Replayed)
    assert len(w.history) == before


def test_without_payment_an_amount_due_is_refused_and_nothing_is_granted() -> None:
    w = Wallet()
    w.apply(open_order("o1", 29))
    outcome = w.apply(settle("o1", grant_omr=5, payment=False))
    assert isinstance(outcome, Refused)
    assert outcome.error.reason == "payment_unavailable"
    assert w.types() == ["order.opened"]
    assert w.state.balance_baisa == 0


def test_failing_an_order_releases_its_reservation_and_revokes_its_grant() -> None:
    w = Wallet()
    w.apply(open_order("o1", 29))
    w.apply(settle("o1", grant_omr=5))
    w.apply(FailOrder(customer_id=CUSTOMER, order_id="o1", reason="payment_error", message="x"))
    assert w.types()[-3:] == ["wallet.credit_released", "wallet.grant_revoked", "order.failed"]
    assert (w.state.balance_baisa, w.state.reserved_baisa) == (0, 0)
    assert w.state.orders["o1"].release_slot is True
    # Failing it again changes nothing.
    before = len(w.history)
    w.apply(FailOrder(customer_id=CUSTOMER, order_id="o1", reason="payment_error", message="x"))
    assert len(w.history) == before


def test_a_payment_for_an_abandoned_order_is_recorded_as_refund_due() -> None:
    w = Wallet()
    w.apply(open_order("o1", 9))
    w.apply(settle("o1"))
    w.apply(AbandonOrder(customer_id=CUSTOMER, order_id="o1", reason="expired"))
    w.apply(
        ConfirmPayment(
            customer_id=CUSTOMER, order_id="o1", session_id="cs", amount_paid_baisa=9 * OMR
        )
    )
    assert w.state.orders["o1"].status == "refund_due"
    assert w.types()[-1] == "order.refund_due"


def test_recovery_fails_only_the_status_it_saw() -> None:
    w = Wallet()
    w.apply(open_order("o1", 0))
    w.apply(settle("o1"))
    outcome = w.apply(interrupted("o1"))
    assert isinstance(outcome, Refused)
    assert outcome.error.reason == "order_closed"
    assert w.state.orders["o1"].status == "completed"


def test_query_and_unknown_orders() -> None:
    w = Wallet()
    w.apply(open_order("o1", 3))
    assert isinstance(w.apply(QueryOrder(customer_id=CUSTOMER, order_id="o1")), Decided)
    missing = w.apply(QueryOrder(customer_id=CUSTOMER, order_id="nope"))
    assert isinstance(missing, Refused)
    assert missing.error.reason == "order_not_found"


def test_same_open_command_id_with_another_payload_is_refused() -> None:
    w = Wallet()
    w.apply(open_order("o1", 3), "open-o1")
    assert isinstance(w.apply(open_order("o1", 3), "open-o1"), Replayed)
    reused = w.apply(open_order("o1", 4), "open-o1")
    assert isinstance(reused, Refused)
    assert reused.error.reason == "command_id_reused"


def test_fold_of_the_history_equals_the_live_state() -> None:
    w = Wallet()
    w.apply(open_order("o1", 29))
    w.apply(settle("o1", grant_omr=5))
    w.apply(open_order("o2", 1))
    w.apply(settle("o2", grant_omr=2))
    folded = fold(CUSTOMER, w.history)
    assert folded.view() == w.state.view()
    assert dict(folded.orders) == dict(w.state.orders)


step = st.one_of(
    st.tuples(st.just("open"), st.integers(0, 40)),
    st.tuples(st.just("settle"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("confirm")),
    st.tuples(st.just("abandon")),
    st.tuples(st.just("fail")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(step, st.integers(0, 5)), max_size=60))
def test_no_sequence_of_commands_makes_credit_negative(
    script: list[tuple[tuple[object, ...], int]],
) -> None:
    w = Wallet()
    for action, n in script:
        order_id = f"o{n}"
        kind = action[0]
        if kind == "open":
            w.apply(open_order(order_id, int(action[1])))  # type: ignore[call-overload]
        elif kind == "settle":
            w.apply(settle(order_id, int(action[1]), bool(action[2])))  # type: ignore[call-overload]
        elif kind == "confirm":
            w.apply(
                ConfirmPayment(
                    customer_id=CUSTOMER, order_id=order_id, session_id="cs", amount_paid_baisa=1
                )
            )
        elif kind == "abandon":
            w.apply(AbandonOrder(customer_id=CUSTOMER, order_id=order_id, reason="expired"))
        else:
            w.apply(FailOrder(customer_id=CUSTOMER, order_id=order_id, reason="r", message="m"))
        assert w.state.available_baisa >= 0
        assert w.state.reserved_baisa >= 0
        assert w.state.reserved_baisa == sum(o.reserved_baisa for o in w.state.orders.values())
    assert fold(CUSTOMER, w.history).view() == w.state.view()


def _invoice(outcome: str, invoice_id: str = "in_1") -> RecordInvoice:
    return RecordInvoice(
        customer_id=CUSTOMER,
        order_id="o-1",
        tenant_id="org-1",
        stripe_invoice_id=invoice_id,
        stripe_customer_id="cus_1",
        outcome=outcome,
        amount_baisa=29 * OMR,
        currency="omr",
    )


def test_an_invoice_is_recorded_once_per_outcome_and_never_downgraded_after_payment() -> None:
    w = Wallet()
    failed = w.apply(_invoice("payment_failed"), "stripe-evt-1")
    assert isinstance(failed, Decided)
    assert [e.type for e in failed.events] == ["invoice.recorded"]
    # Stripe retries the same failure in another event: nothing new
    again = w.apply(_invoice("payment_failed"), "stripe-evt-2")
    assert isinstance(again, Decided)
    assert again.events == []
    paid = w.apply(_invoice("paid"), "stripe-evt-3")
    assert isinstance(paid, Decided)
    assert [(e.type, e.outcome) for e in paid.events] == [("invoice.recorded", "paid")]
    # the same event replayed: its receipt; a late failure or a second payment: nothing
    assert isinstance(w.apply(_invoice("paid"), "stripe-evt-3"), Replayed)
    for late in ("payment_failed", "paid"):
        outcome = w.apply(_invoice(late), f"stripe-late-{late}")
        assert isinstance(outcome, Decided)
        assert outcome.events == []
    # another invoice is its own; the fold of the history gives the same state
    other = w.apply(_invoice("paid", "in_2"), "stripe-evt-4")
    assert isinstance(other, Decided)
    assert len(other.events) == 1
    assert dict(fold(CUSTOMER, w.history).invoices) == {"in_1": "paid", "in_2": "paid"}
    assert (w.state.balance_baisa, w.state.reserved_baisa) == (0, 0)  # no credit moves


# ------------------------------------------------------------------ PlaceOrder (issue #19)


def place(
    order_id: str,
    total_omr: int,
    grant_omr: int = 0,
    *,
    payment: bool = False,
    first_order_only: bool = False,
    user_id: str | None = None,
    failure: Failure | None = None,
) -> PlaceOrder:
    grant = (
        Grant(redemption_id=f"r-{order_id}", code="PROMO", amount_baisa=grant_omr * OMR)
        if grant_omr
        else None
    )
    return PlaceOrder(
        customer_id=CUSTOMER,
        order_id=order_id,
        user_id=user_id,
        tenant_id="t1",
        plan_id="plan",
        promo_code="PROMO" if grant_omr else None,
        lines=[OrderLine(kind="plan", id="plan", name="Plan", amount_baisa=total_omr * OMR)],
        total_baisa=total_omr * OMR,
        grant=grant,
        payment_available=payment,
        first_order_only=first_order_only,
        failure=failure,
    )


def test_place_order_opens_grants_and_completes_in_one_decision() -> None:
    w = Wallet()
    outcome = w.apply(place("o1", 9, grant_omr=20), "place-o1")
    assert isinstance(outcome, Decided)
    assert w.types() == ["order.placed"]  # one event, one plain publish
    [placed] = [r.envelope.event for r in w.history]
    assert isinstance(placed, OrderPlaced)
    assert [p.type for p in placed.parts()] == [
        "order.opened",
        "wallet.credit_granted",
        "wallet.credit_reserved",
        "wallet.credit_captured",
        "order.completed",
    ]
    order = w.state.order("o1")
    assert (order.status, order.credit_applied_baisa, order.redemption_id) == (
        "completed",
        9 * OMR,
        "r-o1",
    )
    assert (w.state.balance_baisa, w.state.reserved_baisa) == (11 * OMR, 0)
    # the same command id again replays; the same order under another id is refused
    assert isinstance(w.apply(place("o1", 9, grant_omr=20), "place-o1"), Replayed)
    again = w.apply(place("o1", 9, grant_omr=20), "other-id")
    assert isinstance(again, Refused)
    assert again.error.reason == "order_closed"
    assert len(w.history) == 1


@pytest.mark.parametrize(
    ("total", "grant", "funded", "payment"),
    [(0, 7, 0, False), (9, 20, 0, False), (9, 4, 0, True), (9, 0, 3, True), (9, 0, 12, False)],
)
def test_a_placed_order_folds_exactly_as_the_four_step_checkout_did(
    total: int, grant: int, funded: int, payment: bool
) -> None:
    """order.placed means its parts: the state after it equals the state after the earlier
    checkout's open, grant and settle commands (the same credit, lots, order and counts)."""
    old, new = Wallet(), Wallet()
    for w in (old, new):
        if funded:  # credit from an earlier, expiring grant
            w.apply(open_order("f", 0))
            w.apply(
                SettleOrder(
                    customer_id=CUSTOMER,
                    order_id="f",
                    grant=Grant(
                        redemption_id="r-f",
                        code="OLD",
                        amount_baisa=funded * OMR,
                        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
                    ),
                    payment_available=False,
                )
            )
    old.apply(open_order("o", total))
    old.apply(settle("o", grant, payment))
    assert isinstance(new.apply(place("o", total, grant, payment=payment)), Decided)
    assert new.types()[-1] == "order.placed"
    a, b = old.state, new.state
    assert (a.balance_baisa, a.reserved_baisa, a.completed_orders, a.owner) == (
        b.balance_baisa,
        b.reserved_baisa,
        b.completed_orders,
        b.owner,
    )
    assert dict(a.lots) == dict(b.lots)
    assert dict(a.grants) == dict(b.grants)
    keep = {"updated_at", "opened_at", "promo_code"}  # open_order() names no code
    assert a.order("o").model_dump(exclude=keep) == b.order("o").model_dump(exclude=keep)


def test_place_order_that_credit_does_not_cover_waits_for_payment_or_writes_nothing() -> None:
    w = Wallet()
    refused = w.apply(place("o1", 9, grant_omr=4))
    assert isinstance(refused, Refused)
    assert refused.error.reason == "payment_unavailable"
    assert w.history == []
    assert isinstance(w.apply(place("o2", 9, grant_omr=4, payment=True)), Decided)
    order = w.state.order("o2")
    assert (order.status, order.reserved_baisa, order.amount_due_baisa) == (
        "awaiting_payment",
        4 * OMR,
        5 * OMR,
    )


def test_first_order_only_is_decided_by_the_wallet() -> None:
    w = Wallet()
    assert isinstance(w.apply(place("o1", 0, grant_omr=3, first_order_only=True)), Decided)
    assert w.state.completed_orders == 1
    refused = w.apply(place("o2", 0, grant_omr=3, first_order_only=True))
    assert isinstance(refused, Refused)
    assert refused.error.reason == "not_eligible"
    assert "o2" not in w.state.orders
    # without the rule the same order is placed
    assert isinstance(w.apply(place("o3", 0, grant_omr=3)), Decided)


def test_a_lost_order_is_recorded_failed_whoever_its_user_and_then_cannot_be_placed() -> None:
    w = Wallet()
    assert isinstance(w.apply(place("o1", 0, user_id="owner")), Decided)
    lost = Failure(reason="interrupted", message="rolled back")
    # another user (not a member by claim): recorded all the same, changing no credit
    assert isinstance(w.apply(place("o2", 0, grant_omr=5, user_id="bob", failure=lost)), Decided)
    order = w.state.order("o2")
    assert (order.status, order.failure_reason, order.release_slot) == (
        "failed",
        "interrupted",
        True,
    )
    assert (w.state.balance_baisa, w.state.reserved_baisa) == (0, 0)
    late = w.apply(place("o2", 0, grant_omr=5, user_id="owner"), "place-o2")
    assert isinstance(late, Refused)
    assert late.error.reason == "order_closed"
    assert w.state.balance_baisa == 0
    # a non-member's own placement is refused
    refused = w.apply(place("o3", 0, user_id="bob"))
    assert isinstance(refused, Refused)
    assert refused.error.reason == "not_member"
