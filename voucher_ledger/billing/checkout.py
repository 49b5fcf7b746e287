"""The checkout saga: price, redeem the promo code (the redemption carries the priced order),
place and settle the order in the wallet in one decision, and ask Stripe for the rest. Every
step is a command with a deterministic id derived from the order id, so any step can be retried
(by the client with the same Idempotency-Key, or by the recovery loop after a crash) and
returns its original outcome.

    redeem-<order>   voucher  RedeemVoucher    takes the cap slot; its event carries the order
    place-<order>    wallet   PlaceOrder       the order, the grant, credit applied first: one
                                               append; completed, or awaiting the rest
    (Stripe)                  session create   idempotency key = order id
    session-<order>  wallet   AttachSession
    fail-<order>     wallet   FailOrder        release the reservation, revoke the grant
    reverse-<order>  voucher  ReverseRedemption  gives the cap slot back (never burns it, B2)
    lost-<order>     wallet   PlaceOrder(failure)  recovery: a redemption whose order never
                                               reached the wallet is recorded failed first

So a checkout paid by credit is two decisions with a code and one without (issue #19; it was
four: open, redeem, grant, settle). A refused code writes nothing, except that a global code
refused for want of slots on this Sovereign (issue #22) makes the checkout send ``WantShare`` in
the background: the voucher records the demand signal once per exhaustion, and the customer's
400 is the same. A wallet refusal after the
redemption (not a member, the Organization's first order was required, nothing to pay the rest
with) gives the slot back at once.

A checkout that stops half-way (the process died, a timeout) is finished or compensated by
:meth:`CheckoutService.recover_once` once it is older than ``recovery_after``: a redemption
whose order the wallet does not hold is recorded there as a failed order (``lost-<order>``,
from the order the redemption carried) before its slot is given back, so a late placement of
that order (a retry with the same key) is refused by the wallet, which decides one command
after another. Orders opened by the earlier four-step checkout (``open-``, ``grant-``,
``settle-``) are still finished or compensated by the same loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from voucher_ledger.billing.catalog import CatalogError, CatalogSource, CatalogUnavailable
from voucher_ledger.billing.failpoints import armed, crash_if
from voucher_ledger.billing.stripe_gateway import PaymentError, StripeGateway
from voucher_ledger.commands.bus import EXPIRY_GRACE, BusError, CommandBus, CommandTimeout
from voucher_ledger.commands.chain import placement_after
from voucher_ledger.commands.wire import ON_HOLD, Accepted, Rejected, Then
from voucher_ledger.ledger.codes import validate_customer_id
from voucher_ledger.ledger.commands import (
    AbandonOrder,
    AttachSession,
    ConfirmPayment,
    ExpireCredit,
    FailOrder,
    Failure,
    Grant,
    GrantCredit,
    PlaceOrder,
    QueryOrder,
    RecordInvoice,
    RedeemVoucher,
    ReverseRedemption,
    SettleOrder,
    WalletCommandT,
    WantShare,
)
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Actor, OrderDraft, OrderLine
from voucher_ledger.ledger.ids import uuid5_text
from voucher_ledger.ledger.voucher import VoucherCommandT, redemption_id_for
from voucher_ledger.ledger.wallet import OrderView, WalletView
from voucher_ledger.projections import queries

log = logging.getLogger(__name__)

_ORDER_NS = uuid.UUID("0b7f7c56-3f0e-4d8e-9a3c-6d2f1f1f6a01")
RECOVERY_ACTOR = Actor(sub="checkout-recovery", role="system")
STRIPE_ACTOR = Actor(sub="stripe", role="webhook")
EXPIRY_ACTOR = Actor(sub="credit-expiry", role="system")
DEMAND_ACTOR = Actor(sub="checkout-demand", role="system")

# Failure reason recorded on the order -> the HTTP status a (retried) checkout answers with.
FAILURE_STATUS = {
    "invalid_promo": 400,
    "payment_unavailable": 503,
    "payment_error": 502,
    "interrupted": 409,
    "timeout": 503,
}


class CheckoutError(Exception):
    """The checkout's answer is an error. ``seq``: the stream position its compensation
    reached, so the caller can wait for the read models to show it."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        seq: int = 0,
        reason: str | None = None,
        refusal: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.seq = seq
        self.reason = reason  # a failed order's failure reason (FAILURE_STATUS), when it is one
        self.refusal = refusal  # the ledger's reason for refusing the promo code, when it did


@dataclass(frozen=True, slots=True)
class CheckoutOutcome:
    order: OrderView
    wallet: WalletView | None
    seq: int


def order_id_for(account: str, user_id: str, idempotency_key: str | None) -> str:
    """The same key from the same user for the same account is the same order (B23); no key,
    a new order. (The account is in it: an order lives in one account's wallet.)"""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return uuid5_text(_ORDER_NS, f"{account}\x00{user_id}\x00{idempotency_key}")


def discounted_lines(order: OrderView) -> list[OrderLine]:
    """The order's lines at the prices Stripe charges before credit: each less its share of
    the order's discount (issue #21), the name saying so."""
    if not order.discount_baisa:
        return list(order.lines)
    out = []
    for line, off in zip(order.lines, order.line_discounts, strict=True):
        if off:
            name = f"{line.name} (discount: {off / 1000:g} OMR)"
            line = line.model_copy(update={"amount_baisa": line.amount_baisa - off, "name": name})
        out.append(line)
    return out


def _order_of(reply: Accepted) -> OrderView:
    if reply.order is None:
        raise CheckoutError(503, "the ledger answered without the order; retry")
    return reply.order


def _account_like(value: object) -> bool:
    try:
        validate_customer_id(value)
    except InvalidInput:
        return False
    return True


def wants_share(reply: Rejected) -> bool:
    """A redemption refused for want of slots on this Sovereign (issue #22): its share of a
    global code is used up (``share_exhausted``; ``cap_reached`` with the share in its details
    when the hub's pool was last seen empty, though its slots may sit unused elsewhere)."""
    return reply.reason == "share_exhausted" or (
        reply.reason == "cap_reached" and "share" in reply.details
    )


def _unavailable() -> CheckoutError:
    """The answer while the ledger cannot decide (NATS down, a history on hold)."""
    return CheckoutError(503, "the ledger is unavailable; retry later", {"Retry-After": "2"})


def redeem_command_id(order_id: str) -> str:
    return f"redeem-{order_id}"


def place_command_id(order_id: str) -> str:
    return f"place-{order_id}"


# The Stripe client in force (None: no card payments): the keys may change at run time (the
# admin settings), so the saga asks for it at each step that needs it.
StripeSource = Callable[[], Awaitable[StripeGateway | None]]


class CheckoutService:
    def __init__(
        self,
        bus: CommandBus,
        catalog: CatalogSource,
        stripe: StripeSource,
        *,
        command_timeout: float,
        recovery_after: float,
    ) -> None:
        self._bus = bus
        self.catalog = catalog
        self.stripe = stripe
        self._timeout = command_timeout
        self.recovery_after = recovery_after
        # demand signals under way, one per code at most: a storm of refusals at an exhausted
        # share sends one while one is in flight, not one per customer
        self._wants: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------------------ commands

    async def _send(
        self,
        command: VoucherCommandT | WalletCommandT,
        command_id: str,
        actor: Actor,
        *,
        expires_at: datetime | None = None,
        then: Then | None = None,
    ) -> Accepted | Rejected:
        try:
            return await self._bus.send(
                command,
                actor=actor,
                command_id=command_id,
                timeout=self._timeout,
                expires_at=expires_at,
                then=then,
            )
        except CommandTimeout as exc:
            raise CheckoutError(
                503,
                "the ledger did not answer in time; retry with the same Idempotency-Key",
                {"Retry-After": "1"},
            ) from exc
        except BusError as exc:
            raise _unavailable() from exc

    async def _wallet(
        self, command: WalletCommandT, command_id: str, actor: Actor
    ) -> tuple[Accepted | None, Rejected | None]:
        reply = await self._send(command, command_id, actor)
        if isinstance(reply, Rejected):
            return None, reply
        return reply, None

    # ------------------------------------------------------------------------------ checkout

    async def price(self, plan_id: str, addons: Sequence[str]) -> list[OrderLine]:
        try:
            catalog = await self.catalog.get()
        except CatalogUnavailable as exc:
            log.warning("catalog unavailable: %s", exc)
            raise CheckoutError(503, "the catalog is unavailable; retry later") from exc
        try:
            return catalog.price(plan_id, addons)
        except CatalogError as exc:
            raise CheckoutError(400, f"failed to compute order total: {exc}") from exc

    async def checkout(
        self,
        *,
        user_id: str,
        actor: Actor,
        plan_id: str,
        tenant_id: str,
        apps: list[str],
        addons: list[str],
        promo_code: str | None,
        idempotency_key: str | None,
        member_by_claim: bool = False,
    ) -> CheckoutOutcome:
        """Check out for the account ``tenant_id`` (the Organization) as ``user_id``;
        ``member_by_claim``: the user's token names the Organization (else the account must be
        the user's own: nobody else's order opened it and did not fail)."""
        # Priced before anything is written: a catalog failure cannot burn a promo slot.
        lines = await self.price(plan_id, addons)
        await self.stripe()  # the payment settings answer (cached) before anything is written
        customer_id = tenant_id
        order_id = order_id_for(customer_id, user_id, idempotency_key)
        place = PlaceOrder(
            customer_id=customer_id,
            user_id=user_id,
            member_by_claim=member_by_claim,
            order_id=order_id,
            tenant_id=tenant_id,
            plan_id=plan_id,
            apps=apps,
            addons=addons,
            promo_code=promo_code,
            lines=lines,
            total_baisa=sum(line.amount_baisa for line in lines),
            payment_available=await self.stripe() is not None,
        )
        redeemed: Grant | None = None
        placed: Accepted | Rejected | None = None  # the placement's reply, when chained
        if promo_code:
            place, placed = await self._redeem(place, actor)
            redeemed = place.grant
            crash_if("checkout.after_redeem")
        if placed is None:
            placed = await self._send(place, place_command_id(order_id), actor)
        if isinstance(placed, Rejected):
            return await self._not_placed(place, redeemed, placed, actor)
        crash_if("checkout.after_settle")
        return await self.advance(customer_id, actor, _order_of(placed), placed.wallet, placed.seq)

    async def _redeem(
        self, place: PlaceOrder, actor: Actor
    ) -> tuple[PlaceOrder, Accepted | Rejected | None]:
        """The order's redemption (carrying the order), with the order's placement chained to
        it: ``place`` with the redemption's terms (:func:`placement_after`), and the
        placement's reply if the processor placed it (None: the checkout places it itself)."""
        assert place.promo_code is not None
        # A failpoint between the two steps (the crash tests) needs them apart.
        then = (
            None
            if armed("checkout.after_redeem")
            else Then(command_id=place_command_id(place.order_id), command=place)
        )
        reply = await self._send(
            RedeemVoucher(
                code=place.promo_code,
                customer_id=place.customer_id,
                user_id=place.user_id or place.customer_id,
                plan_id=place.plan_id,
                order_total_baisa=place.total_baisa,
                order=place.draft(),
            ),
            redeem_command_id(place.order_id),
            actor,
            then=then,
        )
        if isinstance(reply, Rejected):
            if reply.reason == "expired":
                raise CheckoutError(
                    503,
                    "the ledger did not answer in time; retry with the same Idempotency-Key",
                    {"Retry-After": "1"},
                )
            if wants_share(reply):
                self._want_share(place.promo_code)
            raise CheckoutError(
                400,
                f"invalid promo code: {reply.message}",
                reason="invalid_promo",
                refusal=reply.reason,
            )
        placed = placement_after(place, reply)
        if placed is None:
            raise CheckoutError(503, "the ledger answered without the redemption; retry")
        if isinstance(reply.then, Rejected) and reply.then.reason == ON_HOLD:
            raise _unavailable()
        return placed, reply.then

    def _want_share(self, code: str) -> None:
        """This Sovereign's share of the global code ``code`` is used up and a customer was
        refused: say so to the hub (``WantShare``, issue #22), in the background, so the
        refusal is not slowed; its outcome is only logged (the voucher records one signal per
        exhaustion, whatever the number of refusals)."""
        if code in self._wants:
            return  # one is on its way
        task = asyncio.create_task(self._send_want(code), name=f"want-share-{code}")
        self._wants[code] = task
        task.add_done_callback(lambda _: self._wants.pop(code, None))

    async def _send_want(self, code: str) -> None:
        try:
            reply = await self._bus.send(
                WantShare(code=code), actor=DEMAND_ACTOR, timeout=self._timeout
            )
        except BusError as exc:
            log.info("checkout: the want of slots of %s not sent: %r", code, exc)
            return
        if isinstance(reply, Rejected):
            log.info("checkout: the want of slots of %s refused: %s", code, reply.message)

    async def _not_placed(
        self, place: PlaceOrder, redeemed: Grant | None, refused: Rejected, actor: Actor
    ) -> CheckoutOutcome:
        """The wallet refused to place the order. If the order exists (this key's earlier
        checkout, or recovery recorded it failed), that order is the answer; this request's
        own redemption, if the order is not its, is given back."""
        customer_id, order_id = place.customer_id, place.order_id
        existing: tuple[OrderView, WalletView | None, int] | None = None
        if refused.reason in ("order_closed", "command_id_reused"):
            existing = await self._current(customer_id, actor, order_id)
        seq = 0
        if place.promo_code and (existing is None or existing[0].promo_code != place.promo_code):
            seq = await self._give_back(place, actor)
        if refused.reason == "command_id_reused" and existing is not None:
            raise CheckoutError(
                409, "Idempotency-Key was already used for a different checkout", seq=seq
            )
        if existing is not None:
            return await self.advance(customer_id, actor, *existing)
        if refused.reason == "not_member":
            raise CheckoutError(403, refused.message, reason="not_member", seq=seq)
        if refused.reason == "account_moved":  # its billing is on another Sovereign now
            raise CheckoutError(409, refused.message, reason="account_moved", seq=seq)
        if refused.reason == "not_eligible":
            raise CheckoutError(
                400,
                f"invalid promo code: {refused.message}",
                reason="invalid_promo",
                seq=seq,
                refusal=refused.reason,
            )
        if refused.reason == "payment_unavailable":
            raise CheckoutError(
                503,
                "payment processor is not configured yet. Please contact support or use "
                "a promo code that covers the full amount.",
                seq=seq,
                reason="payment_unavailable",
            )
        raise CheckoutError(400, refused.message, seq=seq)

    async def _give_back(self, place: PlaceOrder, actor: Actor) -> int:
        """Reverse this request's redemption of ``place.promo_code`` (idempotent)."""
        assert place.promo_code is not None
        return await self._reverse(
            place.promo_code,
            place.customer_id,
            place.order_id,
            f"checkout {place.order_id} not placed",
            actor,
        )

    async def _reverse(
        self, code: str, customer_id: str, order_id: str, reason: str, actor: Actor
    ) -> int:
        """Give back the slot ``redeem-<order_id>`` took on ``code``, if it took one
        (idempotent: ``reverse-<order_id>``). Returns the reversal's stream sequence, or 0."""
        reply = await self._send(
            ReverseRedemption(
                code=code,
                customer_id=customer_id,
                redemption_id=redemption_id_for(code, customer_id, redeem_command_id(order_id)),
                reason=reason,
            ),
            f"reverse-{order_id}",
            actor,
        )
        if isinstance(reply, Rejected):
            if reply.reason != "redemption_not_found":
                log.warning("order %s: slot release refused: %s", order_id, reply.reason)
            return 0
        return reply.seq

    async def advance(
        self,
        customer_id: str,
        actor: Actor,
        order: OrderView,
        wallet: WalletView | None,
        seq: int,
        *,
        recovering: bool = False,
    ) -> CheckoutOutcome:
        """Take the order from wherever it is to an answer. ``recovering``: the client is gone,
        so an order still ``opened`` is compensated rather than redeemed now."""
        took_no_slot = False  # the voucher refused this order's redemption: nothing to give back
        if order.status == "opened":
            if recovering:  # rolled back; the "failed" branch below gives the slot back
                order, wallet, seq = await self._failed(
                    customer_id,
                    actor,
                    order,
                    "interrupted",
                    "checkout was interrupted and has been rolled back; start a new checkout",
                    expected="opened",
                )
            else:
                order, wallet, seq, took_no_slot = await self._settle(
                    customer_id, actor, order, wallet
                )
        if order.status == "awaiting_payment" and order.session_url is None:
            order, wallet, seq = await self._request_payment(customer_id, actor, order, seq)
        if order.status == "failed":
            if order.release_slot and not took_no_slot:
                seq = max(seq, await self.release_slot(customer_id, actor, order))
            raise CheckoutError(
                FAILURE_STATUS.get(order.failure_reason or "", 409),
                order.failure_message or "checkout failed",
                seq=seq,
                reason=order.failure_reason,
            )
        if order.status in ("abandoned", "refund_due"):
            raise CheckoutError(409, f"order {order.order_id} is {order.status}", seq=seq)
        return CheckoutOutcome(order=order, wallet=wallet, seq=seq)

    def _redeem_deadline(self, order: OrderView) -> datetime:
        # Strictly before recovery may compensate the order (with room for clock skew).
        return order.opened_at + timedelta(seconds=max(1.0, self.recovery_after - EXPIRY_GRACE))

    async def _settle(
        self, customer_id: str, actor: Actor, order: OrderView, wallet: WalletView | None
    ) -> tuple[OrderView, WalletView | None, int, bool]:
        """Redeem the order's code and settle it. The flag: the voucher refused this order's
        redemption and this request's own FailOrder then closed the order, so this checkout
        took no slot and has none to give back. (A concurrent retry with the same key whose
        redemption got through afterwards finds the order failed and gives its slot back
        itself, or recovery does: failed orders with a redemption are recovered.)"""
        grant: Grant | None = None
        if order.promo_code:
            deadline = self._redeem_deadline(order)
            if datetime.now(UTC) >= deadline:
                return *await self._failed(
                    customer_id,
                    actor,
                    order,
                    "interrupted",
                    "checkout took too long and has been rolled back; start a new checkout",
                    expected="opened",
                ), False
            reply = await self._send(
                # What the voucher's eligibility rules look at: the plan, the total before
                # credit, and whether the account completed an order before this one.
                RedeemVoucher(
                    code=order.promo_code,
                    customer_id=customer_id,
                    user_id=order.user_id or customer_id,
                    plan_id=order.plan_id,
                    order_total_baisa=order.total_baisa,
                    new_organization=wallet.completed_orders == 0 if wallet is not None else None,
                ),
                redeem_command_id(order.order_id),
                actor,
                expires_at=deadline,
            )
            if isinstance(reply, Rejected):
                if reply.reason == "expired":
                    reason, message = "timeout", "the ledger did not answer in time; retry"
                else:
                    reason, message = "invalid_promo", f"invalid promo code: {reply.message}"
                failed, _ = await self._fail_order(
                    customer_id, actor, order, reason, message, expected="opened"
                )
                if failed is None:  # the order moved on meanwhile: where is it now?
                    return *await self._current(customer_id, actor, order.order_id), False
                return _order_of(failed), failed.wallet, failed.seq, True
            assert reply.redemption is not None
            grant = Grant(
                redemption_id=reply.redemption.redemption_id,
                code=order.promo_code,
                amount_baisa=reply.redemption.credit_baisa,
                expires_at=reply.redemption.credit_expires_at,
            )
            crash_if("checkout.after_redeem")
            if order.total_baisa == 0:
                # The grant alone, then a one-event settle (see the module docstring). Its
                # outcome is not needed: SettleOrder carries the grant too, grants it if this
                # step did not, and meets any refusal (order_closed) again.
                await self._send(
                    GrantCredit(customer_id=customer_id, order_id=order.order_id, grant=grant),
                    f"grant-{order.order_id}",
                    actor,
                )
                crash_if("checkout.after_grant")
        settled, refused = await self._wallet(
            SettleOrder(
                customer_id=customer_id,
                order_id=order.order_id,
                grant=grant,
                payment_available=await self.stripe() is not None,
            ),
            f"settle-{order.order_id}",
            actor,
        )
        if refused is not None:
            if refused.reason == "payment_unavailable":
                return *await self._failed(
                    customer_id,
                    actor,
                    order,
                    "payment_unavailable",
                    "payment processor is not configured yet. Please contact support or use "
                    "a promo code that covers the full amount.",
                    expected="opened",
                ), False
            # order_closed: recovery (or a concurrent retry) moved the order on; look it up.
            return *await self._current(customer_id, actor, order.order_id), False
        assert settled is not None
        crash_if("checkout.after_settle")
        return _order_of(settled), settled.wallet, settled.seq, False

    async def _request_payment(
        self, customer_id: str, actor: Actor, order: OrderView, seq: int
    ) -> tuple[OrderView, WalletView | None, int]:
        stripe = await self.stripe()
        if stripe is None:
            return await self._failed(
                customer_id,
                actor,
                order,
                "payment_unavailable",
                "payment processor is not configured",
                expected="awaiting_payment",
            )
        params = stripe.session_params(
            order_id=order.order_id,
            # the user who checks out; the account is the metadata's tenant_id
            customer_id=order.user_id or customer_id,
            tenant_id=order.tenant_id,
            lines=discounted_lines(order),
            credit_applied_baisa=order.credit_applied_baisa,
        )
        try:
            session = await stripe.create_session(params, order_id=order.order_id)
        except PaymentError as exc:
            log.warning("order %s: %s", order.order_id, exc.message)
            return await self._failed(
                customer_id,
                actor,
                order,
                "payment_error",
                exc.message,
                expected="awaiting_payment",
            )
        attached, refused = await self._wallet(
            AttachSession(
                customer_id=customer_id,
                order_id=order.order_id,
                session_id=session.id,
                session_url=session.url,
            ),
            f"session-{order.order_id}",
            actor,
        )
        if refused is not None:
            return await self._current(customer_id, actor, order.order_id)
        assert attached is not None
        return _order_of(attached), attached.wallet, attached.seq

    async def _current(
        self, customer_id: str, actor: Actor, order_id: str
    ) -> tuple[OrderView, WalletView | None, int]:
        """The order as the wallet has it now (the read models may lag behind)."""
        reply = await self._send(
            QueryOrder(customer_id=customer_id, order_id=order_id),
            f"query-{uuid.uuid4().hex}",
            actor,
        )
        if isinstance(reply, Rejected) or reply.order is None:
            raise CheckoutError(503, "the ledger could not report the order; retry")
        return reply.order, reply.wallet, reply.seq

    async def _failed(
        self,
        customer_id: str,
        actor: Actor,
        order: OrderView,
        reason: str,
        message: str,
        *,
        expected: str,
    ) -> tuple[OrderView, WalletView | None, int]:
        """Fail the order (release, revoke) if it is still ``expected``; else where it is now."""
        failed, _ = await self._fail_order(
            customer_id, actor, order, reason, message, expected=expected
        )
        if failed is None:
            # The order moved on (settled by its own request, or failed already).
            return await self._current(customer_id, actor, order.order_id)
        return _order_of(failed), failed.wallet, failed.seq

    async def _fail_order(
        self,
        customer_id: str,
        actor: Actor,
        order: OrderView,
        reason: str,
        message: str,
        *,
        expected: str,
    ) -> tuple[Accepted | None, Rejected | None]:
        return await self._wallet(
            FailOrder(
                customer_id=customer_id,
                order_id=order.order_id,
                reason=reason,
                message=message,
                expected_status=expected,
            ),
            f"fail-{order.order_id}",
            actor,
        )

    async def release_slot(self, customer_id: str, actor: Actor, order: OrderView) -> int:
        """Give the checkout's voucher slot back, if it took one (idempotent). Returns the
        stream sequence of the reversal, or 0."""
        if not order.promo_code:
            return 0
        return await self._reverse(
            order.promo_code,
            customer_id,
            order.order_id,
            f"checkout {order.order_id} failed: {order.failure_reason}",
            actor,
        )

    # ------------------------------------------------------------------------------ recovery

    async def recover_once(self, pool: asyncpg.Pool) -> int:
        """Finish or compensate every checkout left half-way; returns how many it touched."""
        todo = await queries.orders_to_recover(pool, older_than=self.recovery_after)
        for order_id, customer_id in todo:
            try:
                order, wallet, seq = await self._current(customer_id, RECOVERY_ACTOR, order_id)
                outcome = await self.advance(
                    customer_id, RECOVERY_ACTOR, order, wallet, seq, recovering=True
                )
                log.info("recovery: order %s is %s", order_id, outcome.order.status)
            except CheckoutError as exc:
                # failed orders end here once their slot is given back; others retry next time
                log.info("recovery: order %s: %s", order_id, exc.message)
        lost = await queries.unplaced_redemptions(pool, older_than=self.recovery_after)
        for row in lost:
            try:
                await self._recover_unplaced(row)
            except CheckoutError as exc:
                log.info("recovery: order %s: %s", row["order_id"], exc.message)
        return len(todo) + len(lost)

    async def _recover_unplaced(self, row: dict[str, Any]) -> None:
        """A checkout's redemption whose order the wallet does not show: record the order
        failed (from the order the redemption carried) so that it can never be placed late,
        then give the slot back. The wallet decides: an order placed meanwhile goes on."""
        code, customer_id, order_id = row["code"], row["customer_id"], row["order_id"]
        actor = RECOVERY_ACTOR
        found = await self._send(
            QueryOrder(customer_id=customer_id, order_id=order_id),
            f"query-{uuid.uuid4().hex}",
            actor,
        )
        order = found.order if isinstance(found, Accepted) else None
        if order is None and row["draft"] is not None:
            draft = OrderDraft.model_validate_json(row["draft"])
            lost = PlaceOrder(
                customer_id=customer_id,
                order_id=order_id,
                user_id=draft.user_id,
                member_by_claim=draft.member_by_claim,
                tenant_id=draft.tenant_id,
                plan_id=draft.plan_id,
                apps=draft.apps,
                addons=draft.addons,
                promo_code=code,
                lines=draft.lines,
                total_baisa=draft.total_baisa,
                failure=Failure(
                    reason="interrupted",
                    message="checkout was interrupted and has been rolled back; "
                    "start a new checkout",
                ),
            )
            reply = await self._send(lost, f"lost-{order_id}", actor)
            if isinstance(reply, Accepted):
                order, found = reply.order, reply
            elif reply.reason == "order_closed":  # placed meanwhile: where is it now?
                order, wallet, seq = await self._current(customer_id, actor, order_id)
                found = Accepted(
                    command_id="", command_type="", seq=seq, wallet=wallet, order=order
                )
        if order is not None and order.promo_code == code and isinstance(found, Accepted):
            outcome = await self.advance(
                customer_id, actor, order, found.wallet, found.seq, recovering=True
            )
            log.info("recovery: order %s is %s", order_id, outcome.order.status)
            return
        # Nobody's redemption: another checkout's order holds this id, or an old redemption
        # without its order.
        await self._reverse(code, customer_id, order_id, f"checkout {order_id} never placed", actor)

    # ------------------------------------------------------------------------------ expiry

    async def expire_once(self, pool: asyncpg.Pool) -> int:
        """Send every expired grant with credit left its ExpireCredit; returns how many. The
        wallet decides each (an already expired grant yields nothing: never twice), and the
        command id is the grant's, so a resend after a restart is a replay."""
        due = await queries.lots_due(pool)
        for lot in due:
            reply = await self._send(
                ExpireCredit(
                    customer_id=lot["customer_id"],
                    order_id=lot["order_id"],
                    redemption_id=lot["redemption_id"],
                ),
                f"expire-{lot['redemption_id']}",
                EXPIRY_ACTOR,
            )
            if isinstance(reply, Rejected):
                log.warning("expiry of %s refused: %s", lot["redemption_id"], reply.reason)
        return len(due)

    # ------------------------------------------------------------------------------ webhooks

    async def _on_invoice(self, event_id: str, etype: str, invoice: dict[str, Any]) -> str:
        """``invoice.paid`` / ``invoice.payment_failed``: recorded on the wallet of the
        Organization whose checkout it bills (the invoice's metadata ``tenant_id``, which
        checkout sets: README "Checkout and credit"; the account is the Organization), once per
        invoice and outcome; the Stripe event id is the command id."""
        found = invoice_metadata(invoice)
        if found is None:
            return "ignored: not one of our invoices (no tenant_id and customer_id metadata)"
        tenant_id, user_id, order_id = found
        gateway = await self.stripe()
        currency = str(invoice.get("currency") or "").lower()
        expected = gateway.currency if gateway is not None else "omr"
        if currency != expected:
            return f"ignored: invoice in {currency or 'no currency'}, not {expected}"
        paid = etype == "invoice.paid"
        amount = invoice.get("amount_paid" if paid else "amount_due")
        try:
            command = RecordInvoice(
                customer_id=tenant_id,  # the account: the Organization (issue #20)
                user_id=user_id or None,
                order_id=order_id or str(invoice.get("id") or ""),
                tenant_id=tenant_id,
                stripe_invoice_id=str(invoice.get("id") or ""),
                stripe_customer_id=_text(invoice.get("customer")),
                outcome="paid" if paid else "payment_failed",
                amount_baisa=amount if isinstance(amount, int) and amount >= 0 else 0,
                currency=currency,
                period_start=_stamp(invoice.get("period_start")),
                period_end=_stamp(invoice.get("period_end")),
                pdf_url=_text(invoice.get("invoice_pdf")),
            )
        except (ValueError, TypeError) as exc:
            log.warning("invoice event %s not recorded: %s", event_id, exc)
            return "ignored: malformed invoice"
        reply = await self._send(command, f"stripe-{event_id}", STRIPE_ACTOR)
        if isinstance(reply, Rejected):
            return f"invoice refused: {reply.reason}"
        return f"invoice {command.stripe_invoice_id} {command.outcome} for {tenant_id!r}"

    async def on_stripe_event(self, event: dict[str, Any]) -> str:
        """Apply one verified Stripe event; returns what happened (for the log). Raises
        CheckoutError(503) when the ledger cannot take it now (Stripe retries)."""
        event_id = str(event.get("id") or "")
        etype = str(event.get("type") or "")
        obj = (event.get("data") or {}).get("object") or {}
        if not isinstance(obj, dict):
            return "ignored: no object"
        if etype == "checkout.session.completed":
            if obj.get("payment_status") not in ("paid", "no_payment_required"):
                return "ignored: not paid yet (async payment pending)"
            action = "confirm"
        elif etype == "checkout.session.async_payment_succeeded":
            action = "confirm"
        elif etype in ("checkout.session.expired", "checkout.session.async_payment_failed"):
            action = "abandon"
        elif etype in ("invoice.paid", "invoice.payment_failed"):
            return await self._on_invoice(event_id, etype, obj)
        else:
            return f"ignored: {etype}"
        metadata = obj.get("metadata") or {}
        order_id = metadata.get("order_id") if isinstance(metadata, dict) else None
        tenant_id = metadata.get("tenant_id") if isinstance(metadata, dict) else None
        user_id = obj.get("client_reference_id")
        if not isinstance(order_id, str) or not order_id:
            return "ignored: not one of our sessions (no order_id)"
        if not isinstance(user_id, str) or not user_id:
            return "ignored: session without client_reference_id"
        # The order lives in its account's wallet: the Organization (the metadata's tenant_id)
        # since issue #20; a session created before was the user's own wallet's.
        accounts = [a for a in (tenant_id, user_id) if isinstance(a, str) and _account_like(a)]
        if not accounts:
            return "ignored: no account to settle"
        outcome = ""
        for customer_id in dict.fromkeys(accounts):
            outcome = await self._on_session(etype, action, event_id, obj, order_id, customer_id)
            if outcome != "order_not_found":
                break
        return outcome if outcome != "order_not_found" else f"{action} refused: order_not_found"

    async def _on_session(
        self,
        etype: str,
        action: str,
        event_id: str,
        obj: dict[str, Any],
        order_id: str,
        customer_id: str,
    ) -> str:
        """Confirm or abandon ``order_id`` in the wallet of ``customer_id``; ``order_not_found``
        when that wallet has no such order."""
        session_id = str(obj.get("id") or "")
        command: WalletCommandT
        if action == "confirm":
            amount = obj.get("amount_total")
            command = ConfirmPayment(
                customer_id=customer_id,
                order_id=order_id,
                session_id=session_id,
                amount_paid_baisa=amount if isinstance(amount, int) and amount >= 0 else 0,
            )
        else:
            command = AbandonOrder(
                customer_id=customer_id,
                order_id=order_id,
                reason=etype.rsplit(".", 1)[-1],
            )
        # The Stripe event id is the command id: the wallet records it in the same atomic append
        # as the effects, so a replayed event changes nothing (B13).
        reply = await self._send(command, f"stripe-{event_id}", STRIPE_ACTOR)
        if isinstance(reply, Rejected):
            if reply.reason == "order_not_found":
                return "order_not_found"
            return f"{action} refused: {reply.reason}"
        status = reply.order.status if reply.order is not None else "?"
        if status == "refund_due":
            log.error(
                "order %s: payment received for a closed order; refund due (session %s)",
                order_id,
                session_id,
            )
        return f"{action}: order {order_id} is {status}"


def invoice_metadata(invoice: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(tenant id, customer id, order id) from an invoice's metadata: its own (a checkout's
    invoice: ``invoice_creation``), or its subscription's (older and newer API shapes)."""
    parent = invoice.get("parent")
    candidates = [
        invoice.get("metadata"),
        (invoice.get("subscription_details") or {}).get("metadata"),
        ((parent or {}).get("subscription_details") or {}).get("metadata")
        if isinstance(parent, dict)
        else None,
    ]
    for metadata in candidates:
        if not isinstance(metadata, dict):
            continue
        tenant, customer = metadata.get("tenant_id"), metadata.get("customer_id")
        if isinstance(tenant, str) and tenant and isinstance(customer, str) and customer:
            order = metadata.get("order_id")
            return tenant, customer, order if isinstance(order, str) and order else None
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _stamp(value: object) -> datetime | None:
    """A Stripe timestamp (seconds); 0 or nothing is no time (the seed made 1970 of it, B22)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**37:
        return datetime.fromtimestamp(value, UTC)
    return None
