"""The superadmin's billing administration (the seed's Billing and Revenue pages):

* ``GET``/``PUT /billing/admin/settings``: the Stripe keys (``billing/admin_settings.py``).
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
from voucher_ledger.http.auth import Principal
from voucher_ledger.http.errors import ApiError, ok, parse_body
from voucher_ledger.http.keys import PAYMENTS
from voucher_ledger.http.models import AdminSettingsBody, AdminSettingsOut, OkOut
from voucher_ledger.http.vouchers import authenticate

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
