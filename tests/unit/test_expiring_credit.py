"""Issue #20 in the wallet decider: expiring grants are spent soonest-first, never once
expired, and their remainder expires once (also credit that comes back after the expiry)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tests.unit.test_wallet import open_order
from voucher_ledger.ledger.commands import (
    AbandonOrder,
    ExpireCredit,
    Grant,
    GrantCredit,
    SettleOrder,
    WalletCommandT,
)
from voucher_ledger.ledger.events import Actor, CreditExpired, EventEnvelope, RecordedEvent
from voucher_ledger.ledger.voucher import Decided
from voucher_ledger.ledger.wallet import WalletState, evolve, fold, handle, initial_state

OMR = 1000
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Account:
    def __init__(self) -> None:
        self.state: WalletState = initial_state("alice")
        self.history: list[RecordedEvent] = []

    def run(self, command: WalletCommandT, now: datetime) -> list[str]:
        command_id = uuid.uuid4().hex
        outcome = handle(self.state, command, command_id, now)
        assert isinstance(outcome, Decided), outcome
        for event in outcome.events:
            rec = RecordedEvent(
                seq=len(self.history) + 1,
                envelope=EventEnvelope(
                    event_id=str(uuid.uuid4()),
                    aggregate="wallet",
                    aggregate_id="alice",
                    occurred_at=now,
                    actor=Actor(sub="alice", role="member"),
                    command_id=command_id,
                    command_fingerprint=command.fingerprint(),
                    event=event,
                ),
            )
            self.history.append(rec)
            self.state = evolve(self.state, rec)
        return [e.type for e in outcome.events]

    def grant(self, order_id: str, omr: int, expires_at: datetime | None) -> None:
        self.run(open_order(order_id, 0), T0)
        grant = Grant(
            redemption_id=f"r-{order_id}", code="C", amount_baisa=omr * OMR, expires_at=expires_at
        )
        self.run(GrantCredit(customer_id="alice", order_id=order_id, grant=grant), T0)
        self.run(SettleOrder(customer_id="alice", order_id=order_id, payment_available=True), T0)


def expire(order_id: str) -> ExpireCredit:
    return ExpireCredit(customer_id="alice", order_id=order_id, redemption_id=f"r-{order_id}")


def test_the_soonest_expiring_grant_is_spent_first_and_its_rest_expires_once() -> None:
    a = Account()
    a.grant("forever", 10, None)
    a.grant("late", 10, T0 + timedelta(days=2))
    a.grant("soon", 10, T0 + timedelta(days=1))
    a.run(open_order("buy", 15), T0)
    a.run(SettleOrder(customer_id="alice", order_id="buy", payment_available=True), T0)
    assert a.state.lots["r-soon"].left == 0
    assert a.state.lots["r-late"].left == 5 * OMR
    assert a.state.available_at(T0) == 15 * OMR
    # from the instant it expires, the rest of "late" is not spendable, not even counted
    at = T0 + timedelta(days=2)
    assert a.state.available_at(at - timedelta(microseconds=1)) == 15 * OMR
    assert a.state.available_at(at) == 10 * OMR
    assert a.run(expire("late"), at - timedelta(seconds=1)) == []  # not yet
    assert a.run(expire("late"), at) == ["wallet.credit_expired"]
    assert a.run(expire("late"), at) == []  # never twice
    assert a.run(expire("soon"), at) == []  # nothing left of it
    expired = [r.envelope.event for r in a.history if isinstance(r.envelope.event, CreditExpired)]
    assert [(e.redemption_id, e.amount_baisa) for e in expired] == [("r-late", 5 * OMR)]
    assert (a.state.balance_baisa, a.state.available_at(at)) == (10 * OMR, 10 * OMR)
    assert fold("alice", a.history).lots == a.state.lots


def test_a_reservation_that_comes_back_after_its_grants_expiry_expires_at_once() -> None:
    a = Account()
    a.grant("soon", 10, T0 + timedelta(days=1))
    a.run(open_order("card", 25), T0)
    a.run(SettleOrder(customer_id="alice", order_id="card", payment_available=True), T0)
    assert a.state.reserved_baisa == 10 * OMR  # the grant, held for the order awaiting payment
    later = T0 + timedelta(days=3)
    assert a.run(expire("soon"), later) == []  # all of it is reserved: nothing to expire
    types = a.run(AbandonOrder(customer_id="alice", order_id="card", reason="expired"), later)
    assert types == ["wallet.credit_released", "order.abandoned", "wallet.credit_expired"]
    assert (a.state.balance_baisa, a.state.reserved_baisa) == (0, 0)
    assert a.run(expire("soon"), later) == []


def test_an_expired_grant_settles_nothing() -> None:
    a = Account()
    a.run(open_order("late", 9), T0)
    lapsed = Grant(redemption_id="r-late", code="C", amount_baisa=20 * OMR, expires_at=T0)
    settle = SettleOrder(customer_id="alice", order_id="late", grant=lapsed, payment_available=True)
    types = a.run(settle, T0)
    assert types == ["wallet.credit_granted", "order.payment_requested"]
    assert a.state.available_at(T0) == 0
    assert a.run(expire("late"), T0) == ["wallet.credit_expired"]
    assert a.state.balance_baisa == 0
