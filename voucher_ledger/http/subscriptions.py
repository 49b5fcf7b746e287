"""An Organization's subscription, invoices and Stripe billing portal (the seed's customer
console billing tab, E4-E6):

* ``GET /billing/subscription`` and ``GET /billing/subscription/{tenantId}``;
* ``GET /billing/invoices`` and ``GET /billing/invoices/{tenantId}``;
* ``POST /billing/portal/{tenantId}``.

Without a tenant: the Organizations the caller ordered for (the latest subscription; every
invoice). With one: only for a member (:func:`require_member`, the one place that decides
it; the seed checked nothing, B4).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web

from voucher_ledger.billing.stripe_gateway import PaymentError
from voucher_ledger.http.auth import Principal
from voucher_ledger.http.errors import ApiError
from voucher_ledger.http.keys import PAYMENTS, POOL
from voucher_ledger.http.models import InvoiceOut, PortalOut, SubscriptionOut
from voucher_ledger.http.vouchers import authenticate
from voucher_ledger.ledger.money import whole_omr
from voucher_ledger.projections import queries

log = logging.getLogger(__name__)

NOT_A_MEMBER = "not a member of this organization"


def _json(model: Any) -> web.Response:
    return web.Response(
        text=model.model_dump_json(exclude_none=True), content_type="application/json"
    )


def path_tenant(request: web.Request) -> str:
    tenant = request.match_info.get("tenant_id", "")
    if not 1 <= len(tenant) <= 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in tenant):
        raise ApiError(400, "tenantId must be 1-200 characters without control characters")
    return tenant


async def require_member(request: web.Request, principal: Principal, tenant_id: str) -> None:
    """Whether the caller may see and manage the Organization's billing, as for its balance:
    a superadmin sees every Organization; otherwise the token's Organizations claim when it
    carries one, else the account's owner (the user whose checkout first opened an order for
    it; README "Organizations"). 403 otherwise, and for an Organization nobody has opened
    yet."""
    if principal.has_any(("superadmin",)):
        return
    by_claim = principal.member_by_claim(tenant_id)
    if by_claim is not None:
        if not by_claim:
            raise ApiError(403, NOT_A_MEMBER)
        return
    pool = request.app[POOL]
    members = await queries.account_members(pool, tenant_id)
    if members.known and members.readable_by(principal.sub):
        return
    if not members.known and tenant_id in (await _owned_and_legacy(pool, principal.sub))[1]:
        return  # ordered for it from the caller's own per-user account (README "Organizations")
    raise ApiError(403, NOT_A_MEMBER)  # nobody's yet proves nobody a member


async def my_organizations(request: web.Request, principal: Principal) -> list[str]:
    """The caller's Organizations: the token's claim when it carries one, else the accounts
    the caller owns (README "Organizations")."""
    if principal.orgs is not None:
        return sorted(principal.orgs)
    owned, legacy = await _owned_and_legacy(request.app[POOL], principal.sub)
    return sorted({*owned, *legacy})


async def _owned_and_legacy(pool: Any, user_id: str) -> tuple[list[str], list[str]]:
    """The accounts the user owns, and the Organizations those accounts ordered for (a
    per-user account carried over, README "Organizations": named by its user's sub, or
    imported from the seed, names its Organizations only on its orders)."""
    owned = await queries.own_accounts(pool, user_id, limit=1000)
    return owned, (await queries.tenants_ordered_for(pool, user_id, owned) if owned else [])


async def asked_tenants(request: web.Request, principal: Principal) -> list[str]:
    """The Organizations a request reads: the path's, once the caller is shown a member, else
    all of the caller's."""
    if "tenant_id" in request.match_info:
        tenant = path_tenant(request)
        await require_member(request, principal, tenant)
        return [tenant]
    return await my_organizations(request, principal)


def subscription_out(row: dict[str, Any]) -> SubscriptionOut:
    return SubscriptionOut(
        id=row["id"],
        customer_id=row["customer_id"],
        tenant_id=row["tenant_id"],
        plan_id=row["plan_id"],
        status=row["status"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        amount_omr=whole_omr(row["amount_baisa"]),
        amount_baisa=row["amount_baisa"],
        order_id=row["order_id"],
    )


def invoice_out(row: dict[str, Any]) -> InvoiceOut:
    return InvoiceOut(
        id=row["id"],
        customer_id=row["customer_id"],
        tenant_id=row["tenant_id"],
        stripe_invoice_id=row["stripe_invoice_id"],
        amount_omr=whole_omr(row["amount_baisa"]),
        amount_baisa=row["amount_baisa"],
        currency=row["currency"],
        status=row["status"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        pdf_url=row["pdf_url"],
        created_at=row["created_at"],
    )


async def get_subscription(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    tenants = await asked_tenants(request, principal)
    row = await queries.latest_subscription_of(request.app[POOL], tenants)
    if row is None:
        raise ApiError(404, "no subscription found")
    return _json(subscription_out(row))


async def list_invoices(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    tenants = await asked_tenants(request, principal)
    rows = await queries.invoices_of_tenants(request.app[POOL], tenants)
    body = "[" + ",".join(invoice_out(r).model_dump_json(exclude_none=True) for r in rows) + "]"
    return web.Response(text=body, content_type="application/json")


async def create_portal(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    tenant = path_tenant(request)
    await require_member(request, principal, tenant)
    pool = request.app[POOL]
    if await queries.subscription(pool, tenant) is None:
        raise ApiError(404, "no subscription found")
    customer = await queries.stripe_customer_of_tenant(pool, tenant)
    if customer is None:
        raise ApiError(404, "customer not found")
    stripe = await request.app[PAYMENTS].gateway()
    if stripe is None:
        raise ApiError(503, "payment processor not configured")
    try:
        url = await stripe.create_portal_session(customer, key=str(uuid.uuid4()))
    except PaymentError as exc:
        log.warning("portal for %r: %s", tenant, exc.message)
        raise ApiError(502, "failed to create portal session") from exc
    return _json(PortalOut(portal_url=url))
