"""The superadmin's billing administration (the seed's Billing and Revenue pages):

* ``GET``/``PUT /billing/admin/settings``: the Stripe keys (``billing/admin_settings.py``);
* ``GET /billing/admin/revenue``: MRR, customers and subscriptions, from the read models.
"""

from __future__ import annotations

import logging

from aiohttp import web

from voucher_ledger.billing.admin_settings import (
    SettingsKeyMissing,
    SettingsUnreadable,
    StripeKeys,
    last4,
)
from voucher_ledger.http.auth import ISSUER_ROLES, Principal
from voucher_ledger.http.errors import ApiError, ok, parse_body
from voucher_ledger.http.keys import PAYMENTS, POOL
from voucher_ledger.http.models import AdminSettingsBody, AdminSettingsOut, OkOut, RevenueOut
from voucher_ledger.http.vouchers import ISSUER_FORBIDDEN, authenticate
from voucher_ledger.ledger.money import whole_omr
from voucher_ledger.projections import queries

log = logging.getLogger(__name__)

SUPERADMIN = "superadmin"
SUPERADMIN_FORBIDDEN = "superadmin role required"


async def require_superadmin(request: web.Request) -> Principal:
    principal = await authenticate(request)
    if not principal.has_any((SUPERADMIN,)):
        raise ApiError(403, SUPERADMIN_FORBIDDEN)
    return principal


def _settings_out(keys: StripeKeys, storable: bool) -> AdminSettingsOut:
    return AdminSettingsOut(
        stripe_secret_key_configured=bool(keys.stripe_secret_key),
        stripe_webhook_secret_configured=bool(keys.stripe_webhook_secret),
        stripe_secret_key_last4=last4(keys.stripe_secret_key),
        stripe_webhook_secret_last4=last4(keys.stripe_webhook_secret),
        stripe_public_key=keys.stripe_public_key,
        updated_at=keys.updated_at,
        stripe_secret_key_source=keys.sources["stripe_secret_key"],
        stripe_webhook_secret_source=keys.sources["stripe_webhook_secret"],
        stripe_public_key_source=keys.sources["stripe_public_key"],
        secrets_storable=storable,
    )


async def get_settings(request: web.Request) -> web.Response:
    await require_superadmin(request)
    payments = request.app[PAYMENTS]
    try:
        keys = await payments.keys(fresh=True)
    except SettingsUnreadable as exc:
        raise ApiError(503, str(exc)) from exc
    return ok(_settings_out(keys, payments.secrets_storable))


async def put_settings(request: web.Request) -> web.Response:
    principal = await require_superadmin(request)
    body = await parse_body(request, AdminSettingsBody)
    changes = {k: v for k, v in body.model_dump(exclude_none=True).items()}
    try:
        await request.app[PAYMENTS].update(changes, actor=principal.sub)
    except SettingsKeyMissing as exc:
        raise ApiError(503, str(exc)) from exc
    except SettingsUnreadable as exc:
        raise ApiError(503, str(exc)) from exc
    return ok(OkOut())


async def revenue(request: web.Request) -> web.Response:
    """The seed's E16 (its later versions let the sovereign-admin read it too, as the orders)."""
    principal = await authenticate(request)
    if not principal.has_any(ISSUER_ROLES):
        raise ApiError(403, ISSUER_FORBIDDEN)
    summary = await queries.revenue(request.app[POOL])
    return ok(
        RevenueOut(
            total_mrr=whole_omr(summary.mrr_baisa),
            total_mrr_baisa=summary.mrr_baisa,
            total_customers=summary.customers,
            new_this_month=summary.new_this_month,
            active_subscriptions=summary.active_subscriptions,
        )
    )
