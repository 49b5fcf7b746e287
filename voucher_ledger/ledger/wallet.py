"""The wallet aggregate (one per customer): credit and the customer's orders.

Credit moves only through events: granted (by a voucher redemption, once per redemption id),
reserved for an order, captured (spent) or released, and revoked when the checkout that earned
it failed. ``balance`` is granted minus captured minus revoked; ``reserved`` is held for orders
awaiting payment; ``available = balance - reserved`` is what a checkout can apply, and the
decider never lets it go below zero (DESIGN.md invariant 3).

Orders live here too, so that applying credit to an order and recording the order's state are
one atomic append: a checkout is a small state machine

    opened -> completed                         (credit covered the total)
    opened -> awaiting_payment -> completed     (Stripe paid the rest)
                               -> abandoned     (session expired / payment failed: release)
    opened | awaiting_payment -> failed         (compensated: release, revoke, give the slot back)
    failed | abandoned -> refund_due            (money arrived for a closed order: recorded)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import immutables
from pydantic import Field

from voucher_ledger.ledger.commands import (
    AbandonOrder,
    AttachSession,
    ConfirmPayment,
    ExpireCredit,
    FailOrder,
    Grant,
    GrantCredit,
    MoveAccount,
    OpenOrder,
    PlaceOrder,
    QueryOrder,
    RecordInvoice,
    SettleOrder,
    WalletCommandT,
)
from voucher_ledger.ledger.durations import discount_ends_at
from voucher_ledger.ledger.errors import (
    AccountMovedAway,
    CheckoutInFlight,
    CommandIdReused,
    DomainError,
    InvalidInput,
    NotEligible,
    NotMember,
    OrderClosed,
    OrderNotFound,
    PaymentUnavailable,
)
from voucher_ledger.ledger.events import (
    AccountMoved,
    AppliedDiscount,
    CreditCaptured,
    CreditExpired,
    CreditGranted,
    CreditReleased,
    CreditReserved,
    DiscountTerms,
    Frozen,
    GrantedDiscount,
    GrantRevoked,
    InvoiceRecorded,
    LotShare,
    OrderAbandoned,
    OrderCompleted,
    OrderFailed,
    OrderLine,
    OrderOpened,
    OrderPaymentRequested,
    OrderPlaced,
    OrderRefundDue,
    OrderSessionCreated,
    PlacedGrant,
    RecordedEvent,
    WalletEventT,
)
from voucher_ledger.ledger.records import replace
from voucher_ledger.ledger.voucher import Decided, Refused, Replayed

TERMINAL = frozenset({"completed", "failed", "abandoned", "refund_due"})


class OrderView(Frozen):
    order_id: str
    status: str
    tenant_id: str
    plan_id: str
    apps: list[str]
    addons: list[str]
    promo_code: str | None
    lines: list[OrderLine]
    total_baisa: int
    credit_applied_baisa: int
    amount_due_baisa: int
    reserved_baisa: int
    paid_by_credit: bool
    session_id: str | None
    session_url: str | None
    redemption_id: str | None
    failure_reason: str | None
    failure_message: str | None
    release_slot: bool
    opened_at: datetime
    updated_at: datetime
    user_id: str = ""  # the login that opened it
    member_by_claim: bool = False
    # what its reservation took from expiring grants
    reserved_lots: list[LotShare] = Field(default_factory=list)
    # issue #21: the discount it got (off ``total_baisa``, before credit), per line too
    discount_baisa: int = 0
    discount_code: str | None = None
    line_discounts: list[int] = Field(default_factory=list)


class WalletView(Frozen):
    customer_id: str
    balance_baisa: int
    reserved_baisa: int
    available_baisa: int
    last_seq: int
    # How many of its orders completed: a voucher for new Organizations only asks for none.
    completed_orders: int = 0


@dataclass(frozen=True, slots=True)
class WalletReceipt:
    """Kept per accepted command in the cached state: a plain slotted record."""

    command_id: str
    fingerprint: str
    seq: int
    order_id: str | None


@dataclass(frozen=True, slots=True)
class HeldGrant:
    amount_baisa: int
    code: str
    order_id: str
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Lot:
    """An expiring grant: what is left of it (not reserved, not spent) and when it expires.
    ``n``: its place among the account's grants (ties of expiry are spent oldest first)."""

    left: int
    expires_at: datetime
    code: str
    order_id: str
    n: int

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True)
class RunningDiscount:
    """A discount the Organization's later checkouts get until ``ends_at`` (None: forever),
    started by the redemption of ``code`` for the order ``order_id``; ``n`` its place."""

    code: str
    terms: DiscountTerms
    ends_at: datetime | None
    order_id: str
    n: int

    def applies_at(self, now: datetime) -> bool:
        return self.ends_at is None or now < self.ends_at


@dataclass(frozen=True, slots=True)
class WalletState:
    customer_id: str
    balance_baisa: int = 0
    reserved_baisa: int = 0
    last_seq: int = 0
    completed_orders: int = 0
    # The account's owner: the user of its orders opened without a membership claim that did
    # not fail (they are all one user's: the decider lets nobody else open one), None when
    # there is none; ``owner_orders`` counts them.
    owner: str | None = None
    owner_orders: int = 0
    grants: immutables.Map[str, HeldGrant] = field(default_factory=immutables.Map)
    # expiring grants by redemption id (credit that never expires is the balance's rest)
    lots: immutables.Map[str, Lot] = field(default_factory=immutables.Map)
    orders: immutables.Map[str, OrderView] = field(default_factory=immutables.Map)
    receipts: immutables.Map[str, WalletReceipt] = field(default_factory=immutables.Map)
    # Stripe invoice id -> the outcome recorded last (paid, or payment_failed)
    invoices: immutables.Map[str, str] = field(default_factory=immutables.Map)
    # running discounts by redemption id (issue #21)
    discounts: immutables.Map[str, RunningDiscount] = field(default_factory=immutables.Map)
    # the Organization moved to another Sovereign (wallet.account_moved), and when
    moved: AccountMoved | None = None
    moved_at: datetime | None = None

    @property
    def available_baisa(self) -> int:
        """Unreserved credit, expired or not (the stream's balance minus reservations)."""
        return self.balance_baisa - self.reserved_baisa

    def expired_baisa(self, now: datetime) -> int:
        """What is left of grants expired by ``now`` and not yet expired by an event."""
        return sum(lot.left for lot in self.lots.values() if lot.expired(now))

    def available_at(self, now: datetime) -> int:
        """What a checkout can spend at ``now``: expired credit never is."""
        return self.available_baisa - self.expired_baisa(now)

    def view(self, now: datetime | None = None) -> WalletView:
        return WalletView(
            customer_id=self.customer_id,
            balance_baisa=self.balance_baisa,
            reserved_baisa=self.reserved_baisa,
            available_baisa=self.available_at(now if now is not None else datetime.now(UTC)),
            last_seq=self.last_seq,
            completed_orders=self.completed_orders,
        )

    def order(self, order_id: str) -> OrderView:
        found = self.orders.get(order_id)
        if found is None:
            raise OrderNotFound(order_id)
        return found


def initial_state(customer_id: str) -> WalletState:
    return WalletState(customer_id=customer_id)


# ---------------------------------------------------------------------------------------- decide


def _granted(customer_id: str, order_id: str, grant: Grant) -> CreditGranted:
    return CreditGranted(
        customer_id=customer_id,
        redemption_id=grant.redemption_id,
        code=grant.code,
        order_id=order_id,
        amount_baisa=grant.amount_baisa,
        expires_at=grant.expires_at,
    )


def take(lots: immutables.Map[str, Lot], amount: int, now: datetime) -> list[LotShare]:
    """Where ``amount`` of spendable credit comes from: the expiring grants not expired at
    ``now``, soonest-expiring first (oldest first on a tie), and the rest (not listed) from
    credit that never expires. The caller checks that ``amount`` is spendable."""
    shares: list[LotShare] = []
    need = amount
    for rid, lot in sorted(
        ((rid, lot) for rid, lot in lots.items() if lot.left > 0 and not lot.expired(now)),
        key=lambda item: (item[1].expires_at, item[1].n),
    ):
        if need <= 0:
            break
        part = min(lot.left, need)
        shares.append(LotShare(redemption_id=rid, amount_baisa=part))
        need -= part
    return shares


def _with_lot(state: WalletState, grant: CreditGranted) -> immutables.Map[str, Lot]:
    if grant.expires_at is None:
        return state.lots
    lot = Lot(grant.amount_baisa, grant.expires_at, grant.code, grant.order_id, len(state.lots))
    return state.lots.set(grant.redemption_id, lot)


def _moved(
    lots: immutables.Map[str, Lot], shares: list[LotShare], sign: int
) -> immutables.Map[str, Lot]:
    for share in shares:
        lot = lots.get(share.redemption_id)
        if lot is not None:
            lots = lots.set(
                share.redemption_id, replace(lot, left=lot.left + sign * share.amount_baisa)
            )
    return lots


def _expire_now(
    who: str, lots: immutables.Map[str, Lot], rids: list[str], now: datetime
) -> list[WalletEventT]:
    """The remainders of the grants ``rids`` that have expired by ``now`` leave the account."""
    events: list[WalletEventT] = []
    for rid in dict.fromkeys(rids):
        lot = lots.get(rid)
        if lot is not None and lot.left > 0 and lot.expired(now):
            events.append(
                CreditExpired(
                    customer_id=who,
                    redemption_id=rid,
                    code=lot.code,
                    order_id=lot.order_id,
                    amount_baisa=lot.left,
                    expires_at=lot.expires_at,
                )
            )
    return events


def decide(
    state: WalletState, command: WalletCommandT, now: datetime | None = None
) -> list[WalletEventT]:
    """``now``: the moment of the decision (the processor's clock), at which expired credit
    is not spendable; the wall clock when not given."""
    now = now if now is not None else datetime.now(UTC)
    who = state.customer_id
    refuse_if_moved(state, command)
    match command:
        case OpenOrder():
            return [_opened(state, command)]
        case PlaceOrder():
            return _place(state, command, now)
        case SettleOrder():
            order = state.order(command.order_id)
            if order.status != "opened":
                raise OrderClosed(order.order_id, order.status)
            return _settlement(
                state,
                order.order_id,
                order.total_baisa,
                command.grant,
                command.payment_available,
                now,
            )
        case GrantCredit():
            order = state.order(command.order_id)
            grant = command.grant
            if grant.redemption_id in state.grants:
                return []
            if order.status != "opened":
                raise OrderClosed(order.order_id, order.status)
            return [_granted(who, order.order_id, grant)]
        case AttachSession():
            order = state.order(command.order_id)
            if order.session_id == command.session_id:
                return []
            if order.status != "awaiting_payment":
                raise OrderClosed(order.order_id, order.status)
            if order.session_id is not None:
                raise InvalidInput("session_id", "the order already has another session")
            return [
                OrderSessionCreated(
                    customer_id=who,
                    order_id=order.order_id,
                    session_id=command.session_id,
                    session_url=command.session_url,
                )
            ]
        case ConfirmPayment():
            order = state.order(command.order_id)
            if order.status in ("completed", "refund_due"):
                return []
            if order.status in ("failed", "abandoned"):
                return [
                    OrderRefundDue(
                        customer_id=who,
                        order_id=order.order_id,
                        stripe_session_id=command.session_id,
                        amount_paid_baisa=command.amount_paid_baisa,
                    )
                ]
            if order.status != "awaiting_payment":
                raise OrderClosed(order.order_id, order.status)
            events: list[WalletEventT] = []
            if order.reserved_baisa:
                events.append(
                    CreditCaptured(
                        customer_id=who, order_id=order.order_id, amount_baisa=order.reserved_baisa
                    )
                )
            events.append(
                OrderCompleted(
                    customer_id=who,
                    order_id=order.order_id,
                    paid_by_credit=False,
                    credit_applied_baisa=order.credit_applied_baisa,
                    amount_paid_baisa=command.amount_paid_baisa,
                    stripe_session_id=command.session_id,
                )
            )
            return events
        case AbandonOrder():
            order = state.order(command.order_id)
            if order.status in TERMINAL:
                return []
            if order.status != "awaiting_payment":
                raise OrderClosed(order.order_id, order.status)
            events = []
            if order.reserved_baisa:
                events.append(
                    CreditReleased(
                        customer_id=who,
                        order_id=order.order_id,
                        amount_baisa=order.reserved_baisa,
                        reason=command.reason,
                        lots=order.reserved_lots,
                    )
                )
            events.append(
                OrderAbandoned(customer_id=who, order_id=order.order_id, reason=command.reason)
            )
            # credit that came back after its grant expired leaves the account at once
            back = _moved(state.lots, order.reserved_lots, 1)
            events.extend(
                _expire_now(who, back, [s.redemption_id for s in order.reserved_lots], now)
            )
            return events
        case FailOrder():
            order = state.order(command.order_id)
            if command.expected_status is not None and order.status != command.expected_status:
                raise OrderClosed(order.order_id, order.status)
            if order.status in ("failed", "abandoned", "refund_due"):
                return []
            if order.status == "completed":
                raise OrderClosed(order.order_id, order.status)
            return _fail(state, order, command, now)
        case ExpireCredit():
            return _expire_now(who, state.lots, [command.redemption_id], now)
        case RecordInvoice():
            known = state.invoices.get(command.stripe_invoice_id)
            if known == command.outcome or known == "paid":
                return []  # recorded already; a failure reported after the payment changes nothing
            return [
                InvoiceRecorded(
                    customer_id=who,
                    tenant_id=command.tenant_id,
                    user_id=command.user_id,
                    stripe_invoice_id=command.stripe_invoice_id,
                    stripe_customer_id=command.stripe_customer_id,
                    outcome=command.outcome,
                    amount_baisa=command.amount_baisa,
                    currency=command.currency,
                    period_start=command.period_start,
                    period_end=command.period_end,
                    pdf_url=command.pdf_url,
                )
            ]
        case QueryOrder():
            state.order(command.order_id)
            return []


def _opened(
    state: WalletState, command: OpenOrder | PlaceOrder, *, check_member: bool = True
) -> OrderOpened:
    """The order a command opens, if the account lets its user open one (``check_member``)."""
    who = state.customer_id
    if command.order_id in state.orders:
        raise InvalidInput("order_id", "order already exists")
    user = command.user_id if command.user_id is not None else who
    if check_member and not command.member_by_claim and state.owner not in (None, user):
        raise NotMember(who, user)
    if sum(line.amount_baisa for line in command.lines) != command.total_baisa:
        raise InvalidInput("total_baisa", "total does not match the order lines")
    return OrderOpened(
        customer_id=who,
        order_id=command.order_id,
        tenant_id=command.tenant_id,
        plan_id=command.plan_id,
        apps=command.apps,
        addons=command.addons,
        promo_code=command.promo_code,
        lines=command.lines,
        total_baisa=command.total_baisa,
        user_id=user,
        member_by_claim=command.member_by_claim,
    )


def _place(state: WalletState, command: PlaceOrder, now: datetime) -> list[WalletEventT]:
    """A checkout's order, placed and settled in one append (or recorded failed)."""
    existing = state.orders.get(command.order_id)
    if existing is not None:  # placed already (by another command id), or failed by recovery
        raise OrderClosed(existing.order_id, existing.status)
    # A failure is recorded whoever the user is: it changes no credit, and recording it is
    # what stops the order for good (its slot is given back next).
    opened = _opened(state, command, check_member=command.failure is None)
    who = state.customer_id
    if command.failure is not None:
        return [
            opened,
            OrderFailed(
                customer_id=who,
                order_id=command.order_id,
                reason=command.failure.reason,
                message=command.failure.message,
                release_slot=True,
            ),
        ]
    if command.grant is not None and command.first_order_only and state.completed_orders:
        raise NotEligible(
            command.grant.code,
            "new_organizations_only",
            "this code is only for an Organization's first order",
        )
    discount = best_discount(state, command, now)
    granted = None
    offer = command.discount
    if offer is not None and offer.terms.duration != "once":
        granted = GrantedDiscount(
            redemption_id=offer.redemption_id,
            code=offer.code,
            terms=offer.terms,
            ends_at=discount_ends_at(now, offer.terms.duration),
        )
    payable = command.total_baisa - (discount.amount_baisa if discount is not None else 0)
    settled = _settlement(
        state, command.order_id, payable, command.grant, command.payment_available, now
    )
    # One event for all of it (OrderPlaced: one plain publish, not an atomic batch); it means
    # exactly [opened, *settled] (OrderPlaced.parts, tested).
    grant = next((e for e in settled if isinstance(e, CreditGranted)), None)
    reserved = next((e for e in settled if isinstance(e, CreditReserved)), None)
    asked = next((e for e in settled if isinstance(e, OrderPaymentRequested)), None)
    return [
        OrderPlaced(
            **opened.model_dump(exclude=_NOT_PLACED),
            grant=PlacedGrant(
                redemption_id=grant.redemption_id,
                code=grant.code,
                amount_baisa=grant.amount_baisa,
                expires_at=grant.expires_at,
            )
            if grant is not None
            else None,
            credit_applied_baisa=reserved.amount_baisa if reserved is not None else 0,
            lots=reserved.lots if reserved is not None else [],
            amount_due_baisa=asked.amount_due_baisa if asked is not None else 0,
            discount=discount,
            discount_granted=granted,
        )
    ]


# order.opened's fields that order.placed does not repeat (its tags; the discount it holds whole)
_NOT_PLACED = {"type", "version", "discount_baisa", "discount_code", "line_discounts"}
_LINE_KINDS = {"plan": "plans", "addon": "addons", "app": "apps"}


def discount_lines(lines: list[OrderLine], terms: DiscountTerms) -> list[int]:
    """What ``terms`` take off each line (in order): a percentage of each line it applies to
    (rounded down to the baisa), or an amount spread over those lines in order."""
    eligible = [
        terms.applies_to is None or _LINE_KINDS.get(line.kind) in terms.applies_to for line in lines
    ]
    if terms.kind == "percent_off":
        pct = terms.percent_off or 0
        return [
            line.amount_baisa * pct // 100 if ok else 0
            for line, ok in zip(lines, eligible, strict=True)
        ]
    left = terms.amount_off_baisa or 0
    out = []
    for line, ok in zip(lines, eligible, strict=True):
        take = min(left, line.amount_baisa) if ok else 0
        left -= take
        out.append(take)
    return out


def best_discount(state: WalletState, command: PlaceOrder, now: datetime) -> AppliedDiscount | None:
    """At most one discount per order: the one that saves the most, among this order's own
    redemption's and the Organization's running ones (the order's own first on a tie)."""
    offers: list[tuple[str, str, DiscountTerms]] = []
    if command.discount is not None:
        offers.append(
            (command.discount.redemption_id, command.discount.code, command.discount.terms)
        )
    for rid, running in sorted(state.discounts.items(), key=lambda item: item[1].n):
        if running.applies_at(now):
            offers.append((rid, running.code, running.terms))
    best: AppliedDiscount | None = None
    for rid, code, terms in offers:
        lines = discount_lines(command.lines, terms)
        amount = sum(lines)
        if amount > 0 and (best is None or amount > best.amount_baisa):
            best = AppliedDiscount(redemption_id=rid, code=code, amount_baisa=amount, lines=lines)
    return best


def _settlement(
    state: WalletState,
    order_id: str,
    total: int,
    grant: Grant | None,
    payment_available: bool,
    now: datetime,
) -> list[WalletEventT]:
    """Grant the redemption's credit (once per redemption id), then apply credit first:
    complete the order on credit alone, or reserve it and ask Stripe for the rest."""
    who = state.customer_id
    events: list[WalletEventT] = []
    granted = 0
    lots = state.lots
    if grant is not None and grant.redemption_id not in state.grants:
        new = _granted(who, order_id, grant)
        if new.expires_at is None or now < new.expires_at:
            granted = grant.amount_baisa
        events.append(new)
        lots = _with_lot(state, new)
    applied = min(state.available_at(now) + granted, total)
    due = total - applied
    if due > 0 and not payment_available:
        raise PaymentUnavailable(order_id, due)
    if applied > 0:
        events.append(
            CreditReserved(
                customer_id=who,
                order_id=order_id,
                amount_baisa=applied,
                lots=take(lots, applied, now),
            )
        )
    if due == 0:
        if applied > 0:
            events.append(CreditCaptured(customer_id=who, order_id=order_id, amount_baisa=applied))
        events.append(
            OrderCompleted(
                customer_id=who,
                order_id=order_id,
                paid_by_credit=True,
                credit_applied_baisa=applied,
                amount_paid_baisa=0,
            )
        )
    else:
        events.append(
            OrderPaymentRequested(
                customer_id=who,
                order_id=order_id,
                credit_applied_baisa=applied,
                amount_due_baisa=due,
            )
        )
    return events


def refuse_if_moved(state: WalletState, command: WalletCommandT | MoveAccount) -> None:
    """A moved Organization (``wallet.account_moved``) opens or places no new order here, nor
    moves again. What was under way still finishes (a payment, an expiry, recovery recording a
    lost order failed so its slot is given back)."""
    if state.moved is None:
        return
    if isinstance(command, OpenOrder | MoveAccount) or (
        isinstance(command, PlaceOrder) and command.failure is None
    ):
        assert state.moved_at is not None
        raise AccountMovedAway(state.customer_id, state.moved.destination, state.moved_at)


def decide_move(state: WalletState, command: MoveAccount) -> list[WalletEventT]:
    """The account leaves for another Sovereign with its history so far (``org export``): not
    twice, not an empty account, and not while a checkout is half-way (an order ``opened``:
    its next steps would land after the move, outside the bundle)."""
    refuse_if_moved(state, command)
    if state.last_seq == 0:
        raise InvalidInput("customer_id", f"{state.customer_id} has no billing history here")
    for order in state.orders.values():
        if order.status == "opened":
            raise CheckoutInFlight(state.customer_id, order.order_id)
    return [
        AccountMoved(
            customer_id=state.customer_id,
            destination=command.destination,
            bundle_digest=command.bundle_digest,
            wallet_events=command.wallet_events,
            redemption_events=command.redemption_events,
            last_seq=state.last_seq,
            trail_upto=command.trail_upto,
        )
    ]


def _fail(
    state: WalletState, order: OrderView, command: FailOrder, now: datetime
) -> list[WalletEventT]:
    who = state.customer_id
    events: list[WalletEventT] = []
    available = state.available_baisa
    lots = state.lots
    if order.reserved_baisa:
        events.append(
            CreditReleased(
                customer_id=who,
                order_id=order.order_id,
                amount_baisa=order.reserved_baisa,
                reason=command.reason,
                lots=order.reserved_lots,
            )
        )
        available += order.reserved_baisa
        lots = _moved(lots, order.reserved_lots, 1)
    release_slot = True
    held = state.grants.get(order.redemption_id) if order.redemption_id else None
    if held is not None and not held.revoked:
        # What can be taken back: the unreserved credit not expired (after the release), and
        # the grant's own remainder even if it expired (it would leave the account anyway).
        own = lots.get(order.redemption_id) if order.redemption_id else None
        available -= sum(lot.left for lot in lots.values() if lot.expired(now))
        if own is not None and own.expired(now):
            available += own.left
        if available >= held.amount_baisa:
            assert order.redemption_id is not None
            # taken from the grant itself first, then as a checkout would spend
            shares: list[LotShare] = []
            rest = held.amount_baisa
            if own is not None and own.left > 0:
                part = min(own.left, rest)
                shares.append(LotShare(redemption_id=order.redemption_id, amount_baisa=part))
                rest -= part
            if rest:
                others = lots.delete(order.redemption_id) if own is not None else lots
                shares.extend(take(others, rest, now))
            lots = _moved(lots, shares, -1)
            events.append(
                GrantRevoked(
                    customer_id=who,
                    redemption_id=order.redemption_id,
                    code=held.code,
                    order_id=order.order_id,
                    amount_baisa=held.amount_baisa,
                    reason=command.reason,
                    lots=shares,
                )
            )
        else:
            # Another checkout already spent this credit: the redemption was used, so it stays
            # (and so does its slot). Taking the credit back would make the balance negative.
            release_slot = False
    events.append(
        OrderFailed(
            customer_id=who,
            order_id=order.order_id,
            reason=command.reason,
            message=command.message,
            release_slot=release_slot,
        )
    )
    # credit that came back after its grant expired leaves the account at once
    events.extend(_expire_now(who, lots, [s.redemption_id for s in order.reserved_lots], now))
    return events


WalletOutcome = Replayed[WalletReceipt] | Decided[WalletEventT] | Refused


def handle(
    state: WalletState, command: WalletCommandT, command_id: str, now: datetime | None = None
) -> WalletOutcome:
    """Idempotent decide: a known command id replays; one reused for another payload is refused."""
    known = state.receipts.get(command_id)
    if known is not None:
        if known.fingerprint != command.fingerprint():
            return Refused(CommandIdReused(command_id))
        return Replayed(known)
    try:
        return Decided(decide(state, command, now))
    except DomainError as err:
        # Without its traceback: the frames it holds (the processor's, through f_back) would
        # make every refusal a reference cycle for the cyclic GC (~15 % of a processor's CPU
        # in a hot code's storm, half of whose attempts are refused at the cap).
        return Refused(err.with_traceback(None))


# ---------------------------------------------------------------------------------------- evolve


def _set_order(state: WalletState, order: OrderView, **changes: object) -> WalletState:
    updated = order.model_copy(update=changes)
    return replace(state, orders=state.orders.set(order.order_id, updated))


def _hold(state: WalletState, order: OrderView | None, delta: int, at: datetime) -> WalletState:
    """Move ``delta`` into (or out of) the reservation, on the wallet and on its order."""
    state = replace(state, reserved_baisa=state.reserved_baisa + delta)
    if order is None:
        return state
    return _set_order(state, order, reserved_baisa=order.reserved_baisa + delta, updated_at=at)


def evolve(state: WalletState, recorded: RecordedEvent, fingerprint: str = "") -> WalletState:
    env = recorded.envelope
    event = env.event
    at = env.occurred_at
    if isinstance(event, OrderPlaced):
        for part in event.parts():
            state = _apply(state, part, at)
        granted = event.discount_granted
        if granted is not None:
            running = RunningDiscount(
                granted.code, granted.terms, granted.ends_at, event.order_id, len(state.discounts)
            )
            state = replace(state, discounts=state.discounts.set(granted.redemption_id, running))
    else:
        state = _apply(state, event, at)
    if state.available_baisa < 0 or state.reserved_baisa < 0:
        # The decider never produces this; a stream that does is corrupt, and must not be folded.
        raise ValueError(f"wallet {state.customer_id}: negative credit at seq {recorded.seq}")
    receipt = WalletReceipt(
        command_id=env.command_id,
        fingerprint=fingerprint or env.command_fingerprint,
        seq=recorded.seq,
        order_id=getattr(event, "order_id", None),
    )
    return replace(
        state, last_seq=recorded.seq, receipts=state.receipts.set(env.command_id, receipt)
    )


def restamp(state: WalletState, stamps: list[tuple[str, int]]) -> WalletState:
    """``state`` folded from events not stored yet (their sequence 0), once they are stored:
    ``stamps`` holds each event's command id and stream sequence, in order. What a fold with
    the sequences would give (they are only in ``last_seq`` and the receipts), without
    folding again (an ``order.placed`` is six part events, the processor's dearest fold)."""
    receipts = state.receipts
    for command_id, seq in stamps:
        receipts = receipts.set(command_id, replace(receipts[command_id], seq=seq))
    return replace(state, last_seq=stamps[-1][1], receipts=receipts)


def _apply(state: WalletState, event: Frozen, at: datetime) -> WalletState:
    """One event's effect on the state (``order.placed``: one call per part)."""
    order_id: str | None = getattr(event, "order_id", None)
    order = state.orders.get(order_id) if order_id else None
    order_changes: dict[str, object] | None = None  # applied to ``order`` after the match
    match event:
        case OrderOpened():
            opened = OrderView(
                order_id=event.order_id,
                status="opened",
                tenant_id=event.tenant_id,
                plan_id=event.plan_id,
                apps=event.apps,
                addons=event.addons,
                promo_code=event.promo_code,
                lines=event.lines,
                total_baisa=event.total_baisa,
                credit_applied_baisa=0,
                amount_due_baisa=event.total_baisa - event.discount_baisa,
                reserved_baisa=0,
                paid_by_credit=False,
                session_id=None,
                session_url=None,
                redemption_id=None,
                failure_reason=None,
                failure_message=None,
                release_slot=False,
                opened_at=at,
                updated_at=at,
                user_id=event.user_id,
                member_by_claim=event.member_by_claim,
                discount_baisa=event.discount_baisa,
                discount_code=event.discount_code,
                line_discounts=event.line_discounts,
            )
            state = replace(state, orders=state.orders.set(event.order_id, opened))
            if not event.member_by_claim and state.owner in (None, event.user_id):
                state = replace(state, owner=event.user_id, owner_orders=state.owner_orders + 1)
        case CreditGranted():
            state = replace(
                state,
                balance_baisa=state.balance_baisa + event.amount_baisa,
                grants=state.grants.set(
                    event.redemption_id, HeldGrant(event.amount_baisa, event.code, event.order_id)
                ),
                lots=_with_lot(state, event),
            )
            order_changes = {"redemption_id": event.redemption_id}
        case GrantRevoked():
            held = state.grants.get(event.redemption_id)
            state = replace(
                state,
                balance_baisa=state.balance_baisa - event.amount_baisa,
                lots=_moved(state.lots, event.lots, -1),
            )
            if held is not None:
                state = replace(
                    state, grants=state.grants.set(event.redemption_id, replace(held, revoked=True))
                )
        case CreditReserved():
            state = _hold(state, order, event.amount_baisa, at)
            state = replace(state, lots=_moved(state.lots, event.lots, -1))
            order_changes = {"reserved_lots": event.lots}
            order = state.orders.get(event.order_id)
        case CreditCaptured():
            state = _hold(state, order, -event.amount_baisa, at)
            state = replace(state, balance_baisa=state.balance_baisa - event.amount_baisa)
            order_changes = {"reserved_lots": []}
            order = state.orders.get(event.order_id)
        case CreditReleased():
            state = _hold(state, order, -event.amount_baisa, at)
            state = replace(state, lots=_moved(state.lots, event.lots, 1))
            order_changes = {"reserved_lots": []}
            order = state.orders.get(event.order_id)
        case CreditExpired():
            lot = state.lots.get(event.redemption_id)
            state = replace(state, balance_baisa=state.balance_baisa - event.amount_baisa)
            if lot is not None:
                state = replace(
                    state,
                    lots=state.lots.set(
                        event.redemption_id, replace(lot, left=lot.left - event.amount_baisa)
                    ),
                )
        case OrderPaymentRequested():
            order_changes = {
                "status": "awaiting_payment",
                "credit_applied_baisa": event.credit_applied_baisa,
                "amount_due_baisa": event.amount_due_baisa,
            }
        case OrderSessionCreated():
            order_changes = {"session_id": event.session_id, "session_url": event.session_url}
        case OrderCompleted():
            if order is not None and order.status != "completed":
                state = replace(state, completed_orders=state.completed_orders + 1)
            if order is not None:
                order_changes = {
                    "status": "completed",
                    "paid_by_credit": event.paid_by_credit,
                    "credit_applied_baisa": event.credit_applied_baisa,
                    "amount_due_baisa": order.total_baisa
                    - order.discount_baisa
                    - event.credit_applied_baisa,
                    "session_id": event.stripe_session_id or order.session_id,
                }
        case OrderFailed():
            if (
                order is not None
                and order.status != "failed"
                and not order.member_by_claim
                and order.user_id == state.owner
            ):
                left = state.owner_orders - 1
                state = replace(state, owner=state.owner if left else None, owner_orders=left)
            started = [rid for rid, d in state.discounts.items() if d.order_id == event.order_id]
            if started:  # a discount the failed checkout's redemption started goes with it
                kept = state.discounts
                for rid in started:
                    kept = kept.delete(rid)
                state = replace(state, discounts=kept)
            order_changes = {
                "status": "failed",
                "failure_reason": event.reason,
                "failure_message": event.message,
                "release_slot": event.release_slot,
            }
        case OrderAbandoned():
            order_changes = {"status": "abandoned", "failure_reason": event.reason}
        case OrderRefundDue():
            order_changes = {"status": "refund_due"}
        case InvoiceRecorded():
            state = replace(
                state, invoices=state.invoices.set(event.stripe_invoice_id, event.outcome)
            )
        case AccountMoved():
            state = replace(state, moved=event, moved_at=at)
        case _:
            raise TypeError(f"{type(event).__name__} is not a wallet event")
    if order_changes is not None and order is not None:  # an event of an order we hold
        state = _set_order(state, order, updated_at=at, **order_changes)
    return state


def fold(customer_id: str, history: list[RecordedEvent]) -> WalletState:
    state = initial_state(customer_id)
    for recorded in history:
        state = evolve(state, recorded)
    return state
