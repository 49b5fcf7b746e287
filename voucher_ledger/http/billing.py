"""Checkout, the Stripe webhook, the customer's balance and the admin order list.

* ``POST /billing/checkout`` and its aliases ``/billing/purchase``, ``/api/v1/billing/purchase``
  and ``/api/v1/sme/billing/purchase`` (a member of the Organization ``tenant_id`` names, whose
  account pays and is credited);
* ``POST /billing/webhook`` (public; Stripe's signature is the authentication);
* ``GET /billing/balance[?tenant_id=]`` (a member of the Organization; issuers read any);
* ``GET /billing/admin/orders`` (``superadmin`` or ``sovereign-admin``);
* ``GET /billing/catalog`` (public: what a marketplace shows before sign-in).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from voucher_ledger.billing.catalog import Addon, CatalogUnavailable, Plan
from voucher_ledger.billing.checkout import CheckoutError, CheckoutOutcome, CheckoutService
from voucher_ledger.billing.stripe_gateway import WebhookSignatureError
from voucher_ledger.http.auth import ISSUER_ROLES, Principal
from voucher_ledger.http.errors import ApiError, int_query, parse_body
from voucher_ledger.http.keys import CATALOG, CHECKOUT, PAYMENTS, POOL, PROMO_LIMITER, SETTINGS
from voucher_ledger.http.models import (
    BalanceOut,
    CatalogItemOut,
    CatalogOut,
    CheckoutBody,
    CheckoutOut,
    CreditEntryOut,
    ExpiringCreditOut,
    OrderOut,
    WebhookOut,
)
from voucher_ledger.http.openapi import MAX_OFFSET, ORDER_STATUS_FILTERS
from voucher_ledger.http.paging import page_headers
from voucher_ledger.http.ratelimit import too_many_requests
from voucher_ledger.http.vouchers import authenticate, client_address, wait_for_projections
from voucher_ledger.ledger.codes import (
    normalise_code,
    validate_command_id,
    validate_customer_id,
)
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.money import BAISA, whole_omr
from voucher_ledger.projections import queries

log = logging.getLogger(__name__)

CHECKOUT_PATHS = (
    "/billing/checkout",
    "/billing/purchase",
    "/api/v1/billing/purchase",
    "/api/v1/sme/billing/purchase",
)
_EVENT_ID = re.compile(r"^[A-Za-z0-9_]{1,120}$")


# The seed's order vocabulary where its clients read it (its Orders page knows pending and
# completed): an order waiting for Stripe is `pending`; the ledger's finer state is `state`.
_SEED_STATUS = {"awaiting_payment": "pending"}
_STATE_OF_FILTER = {"pending": "awaiting_payment"}


def seed_status(state: str) -> str:
    return _SEED_STATUS.get(state, state)


def omr(baisa: int) -> int:
    """Whole OMR, truncated toward zero (a debit of 9.5 OMR shows as -9, never -10)."""
    return whole_omr(baisa)


def _ok(model: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(exclude_none=True),
        status=status,
        content_type="application/json",
    )


async def require_user(request: web.Request) -> Principal:
    return await authenticate(request)


def _service(request: web.Request) -> CheckoutService:
    return request.app[CHECKOUT]


def _answer(outcome: CheckoutOutcome) -> CheckoutOut:
    order = outcome.order
    available = outcome.wallet.available_baisa if outcome.wallet is not None else 0
    return CheckoutOut(
        order_id=order.order_id,
        status=seed_status(order.status),
        state=order.status,
        paid_by_credit=order.status == "completed" and order.paid_by_credit,
        session_url=order.session_url if order.status == "awaiting_payment" else None,
        credit_balance=omr(available),
        credit_balance_baisa=available,
        credit_applied_omr=omr(order.credit_applied_baisa),
        credit_applied_baisa=order.credit_applied_baisa,
        amount_due_omr=omr(order.amount_due_baisa),
        amount_due_baisa=order.amount_due_baisa,
        total_omr=omr(order.total_baisa),
        total_baisa=order.total_baisa,
        discount_omr=order.discount_baisa / BAISA,
        discount_baisa=order.discount_baisa,
    )


async def _a_guess(request: web.Request, code: str | None, refusal: str | None) -> bool:
    """Whether a refused promo code counts against the guessing limit: one that does not exist
    for the public (unknown, or revoked: the preview's 404). A code refused at its cap or while
    inactive exists (the preview says so, 410): customers racing for a popular code are not
    guessing, and counting them queued a storm's every refusal behind the last one's count (the
    bench's checkout at a hot code's cap fell from ~440 to ~225 per second). The ledger's
    reason (``refusal``) says which, except that an inactive code may be a revoked one: only
    then is the read model asked (a storm's refusals at the cap read nothing)."""
    if code is None or refusal == "not_found":
        return True
    if refusal is not None and refusal != "inactive":
        return False  # it exists: at its cap, outside its window, not for this order, ...
    try:
        voucher = await queries.get_voucher(request.app[POOL], code)
    except queries.ReadModelUnavailable:
        return True  # cannot tell: count it
    return voucher is None or bool(voucher["revoked"])


NOT_MEMBER = "you are not a member of this organization"
TENANT_MAX = 200


def _account_id(tenant_id: str) -> str:
    if len(tenant_id) > TENANT_MAX:  # as the checkout body's tenant_id
        raise ApiError(400, f"tenant_id must be at most {TENANT_MAX} characters")
    try:
        return validate_customer_id(tenant_id)
    except InvalidInput as exc:
        raise ApiError(400, f"tenant_id: {exc.message.removeprefix('customer_id ')}") from exc


async def checkout(request: web.Request) -> web.Response:
    principal = await require_user(request)
    try:
        validate_customer_id(principal.sub)  # recorded as the order's user
    except InvalidInput as exc:
        raise ApiError(400, f"the token's subject cannot check out: {exc.message}") from exc
    body = await parse_body(request, CheckoutBody)
    # The account is the Organization the body names; membership is verified, never taken
    # from the body: the token's claim when it carries one (checked here, before anything is
    # written), else ownership, which the account's wallet decides (403 from the ledger).
    account = _account_id(body.tenant_id)
    by_claim = principal.member_by_claim(account)
    if by_claim is False:
        raise ApiError(403, NOT_MEMBER)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        try:
            key = validate_command_id(key)
        except InvalidInput as exc:
            raise ApiError(400, f"Idempotency-Key: {exc.message}") from exc
    promo: str | None = None
    # A checkout with a promo code is refused at once when its client address or its customer
    # has used up the refused-code limit; a refused guess takes a token from both
    # (ratelimit.py, "Refused promo codes").
    limiter = request.app[PROMO_LIMITER]
    counted: list[str] = []
    if body.promo_code is not None and body.promo_code.strip():
        counted = [
            limiter.key("addr", client_address(request)),
            limiter.key("customer", principal.sub),
        ]
        wait = await limiter.check_all(counted)
        if wait > 0:
            return too_many_requests(wait)
        try:
            promo = normalise_code(body.promo_code)
        except InvalidInput as exc:  # a malformed code is a refused one
            await limiter.count_all(counted)
            raise ApiError(400, f"invalid promo code: {exc.message}") from exc
    service = _service(request)
    try:
        outcome = await service.checkout(
            user_id=principal.sub,
            member_by_claim=by_claim is True,
            actor=Actor(sub=principal.sub, role=principal.role),
            plan_id=body.plan_id,
            tenant_id=account,
            apps=body.apps,
            addons=body.addons,
            promo_code=promo,
            idempotency_key=key,
        )
    except CheckoutError as exc:
        guessed = counted and exc.reason == "invalid_promo"
        if guessed and await _a_guess(request, promo, exc.refusal):
            await limiter.count_all(counted)
        if exc.seq:  # the compensation is visible before the answer, as a success would be
            await wait_for_projections(request, exc.seq)
        raise ApiError(exc.status, exc.message, exc.headers) from exc
    # Read-your-writes: the balance and the admin order list show this order already.
    await wait_for_projections(request, outcome.seq)
    log.info(
        "checkout order=%s status=%s total=%d credit=%d due=%d",
        outcome.order.order_id,
        outcome.order.status,
        outcome.order.total_baisa,
        outcome.order.credit_applied_baisa,
        outcome.order.amount_due_baisa,
    )
    return _ok(_answer(outcome))


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "request body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def webhook(request: web.Request) -> web.Response:
    stripe = await request.app[PAYMENTS].gateway()  # None without a Stripe secret key
    if stripe is None or not stripe.webhooks_enabled:
        raise ApiError(503, "webhook not configured")
    payload = await _read_limited(request, request.app[SETTINGS].webhook_body_limit)
    try:
        stripe.verify_webhook(payload, request.headers.get("Stripe-Signature"))
    except WebhookSignatureError as exc:
        log.warning("webhook refused: %s", exc)
        raise ApiError(400, "invalid webhook signature") from exc
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid JSON body") from exc
    if not isinstance(event, dict):
        raise ApiError(400, "invalid JSON body: expected an object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise ApiError(400, "invalid event id")
    try:
        result = await _service(request).on_stripe_event(event)
    except CheckoutError as exc:
        # 5xx: Stripe retries the event later; nothing was applied.
        raise ApiError(503 if exc.status < 500 else exc.status, exc.message) from exc
    log.info("webhook %s %s: %s", event_id, event.get("type"), result)
    return _ok(WebhookOut())


async def _balance_account(request: web.Request, principal: Principal) -> str | None:
    """The account ``GET /billing/balance`` reads (None: an empty balance): ``?tenant_id=``
    when the caller is a member (an issuer reads any), else the caller's only Organization."""
    pool = request.app[POOL]
    named = request.query.getall("tenant_id", [])
    if len(named) > 1:
        raise ApiError(400, "tenant_id must be given once")
    if named:
        account = named[0]
        if not 1 <= len(account) <= TENANT_MAX or any(
            ord(ch) < 32 or ord(ch) == 127 for ch in account
        ):
            raise ApiError(
                400, f"tenant_id must be 1-{TENANT_MAX} characters without control characters"
            )
        if principal.has_any(ISSUER_ROLES):
            return account
        by_claim = principal.member_by_claim(account)
        if by_claim is not None:
            if not by_claim:
                raise ApiError(403, NOT_MEMBER)
            return account
        members = await queries.account_members(pool, account)
        if not members.known:
            return None  # nobody's yet: as empty as a new customer's
        if not members.readable_by(principal.sub):
            raise ApiError(403, NOT_MEMBER)
        return account
    if principal.orgs is not None:
        mine = sorted(principal.orgs)
    else:
        mine = await queries.own_accounts(pool, principal.sub, limit=2)
    if len(mine) > 1:
        raise ApiError(400, "you belong to several organizations: name one with ?tenant_id=")
    return mine[0] if mine else None


async def balance(request: web.Request) -> web.Response:
    principal = await require_user(request)
    pool = request.app[POOL]
    account = await _balance_account(request, principal)
    row = await queries.wallet(pool, account) if account is not None else None
    entries = await queries.credit_entries(pool, account, limit=20) if account is not None else []
    lots = await queries.credit_lots(pool, account) if account is not None else []
    balance_baisa = row["balance_baisa"] if row else 0
    reserved = row["reserved_baisa"] if row else 0
    # Expired credit is never counted, from the instant it expires (before its credit_expired
    # event takes it out of the balance).
    now = datetime.now(UTC)
    expired = sum(lot["left_baisa"] for lot in lots if lot["expires_at"] <= now)
    available = max(0, balance_baisa - reserved - expired)
    return _ok(
        BalanceOut(
            credit_omr=omr(available),
            credit_baisa=available,
            balance_baisa=balance_baisa,
            reserved_baisa=reserved,
            entries=[
                CreditEntryOut(
                    id=str(e["seq"]),
                    kind=e["kind"],
                    amount_omr=omr(e["balance_delta_baisa"]),
                    amount_baisa=e["balance_delta_baisa"],
                    reason=e["reason"],
                    order_id=e["order_id"],
                    balance_after_baisa=e["balance_after_baisa"],
                    created_at=e["created_at"],
                )
                for e in entries
            ],
            expiring=[
                ExpiringCreditOut(
                    amount_omr=omr(lot["left_baisa"]),
                    amount_baisa=lot["left_baisa"],
                    expires_at=lot["expires_at"],
                    code=lot["code"],
                )
                for lot in lots
                if lot["expires_at"] > now
            ],
        )
    )


async def admin_orders(request: web.Request) -> web.Response:
    principal = await require_user(request)
    if not principal.has_any(ISSUER_ROLES):
        raise ApiError(403, "superadmin or sovereign-admin role required")
    limit = int_query(request, "limit", 50, 1, 500)
    offset = int_query(request, "offset", 0, 0, MAX_OFFSET)
    status = request.query.get("status")
    if status is not None and status not in ORDER_STATUS_FILTERS:
        raise ApiError(400, f"status must be one of {', '.join(sorted(ORDER_STATUS_FILTERS))}")
    if status is not None:
        status = _STATE_OF_FILTER.get(status, status)
    pool = request.app[POOL]
    rows, total = await queries.list_orders(pool, limit=limit, offset=offset, status=status)
    items = [
        OrderOut(
            id=r["order_id"],
            customer_id=r["customer_id"],
            tenant_id=r["tenant_id"],
            plan_id=r["plan_id"],
            apps=json.loads(r["apps"]),
            addons=json.loads(r["addons"]),
            lines=json.loads(r["lines"]),
            amount_omr=omr(r["total_baisa"]),
            amount_baisa=r["total_baisa"],
            credit_applied_baisa=r["credit_applied_baisa"],
            amount_due_baisa=r["amount_due_baisa"],
            amount_paid_baisa=r["amount_paid_baisa"],
            paid_by_credit=r["paid_by_credit"],
            status=seed_status(r["status"]),
            state=r["status"],
            stripe_session_id=r["stripe_session_id"],
            promo_code=r["promo_code"],
            failure_reason=r["failure_reason"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            discount_omr=r["discount_baisa"] / BAISA,
            discount_baisa=r["discount_baisa"],
            discount_code=r["discount_code"],
        )
        for r in rows
    ]
    body = "[" + ",".join(i.model_dump_json() for i in items) + "]"
    headers = page_headers(request, total=total, offset=offset, shown=len(items))
    return web.Response(text=body, content_type="application/json", headers=headers)


async def catalog(request: web.Request) -> web.Response:
    """The catalog checkout prices with (the same source: CATALOG_URL, CATALOG_FILE or the
    sample), plans and addons in its order."""
    try:
        current = await request.app[CATALOG].get()
    except CatalogUnavailable as exc:
        log.warning("catalog unavailable: %s", exc)
        unavailable = "the catalog is unavailable; retry later"
        raise ApiError(503, unavailable, {"Retry-After": "2"}) from exc

    def item(entry: Plan | Addon) -> CatalogItemOut:
        return CatalogItemOut(
            id=entry.id,
            name=entry.name or entry.id,
            price_omr=entry.price_omr,
            price_baisa=entry.price_omr * BAISA,
        )

    return _ok(
        CatalogOut(
            plans=[item(p) for p in current.plans.values()],
            addons=[item(a) for a in current.addons.values()],
        )
    )
