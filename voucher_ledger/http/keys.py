"""The application's typed keys, one per resource: what a handler may take from ``request.app``.

``create_app`` sets the first group itself; the second is set by the app's cleanup context once
the component has started (``service/stack.py``), so a handler finds each started and never
``None``."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from voucher_ledger.billing.admin_settings import PaymentSettings
from voucher_ledger.billing.catalog import CatalogSource
from voucher_ledger.billing.checkout import CheckoutService
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.idempotency import IdempotencyKeys
from voucher_ledger.config.settings import Settings
from voucher_ledger.http.auth import Authenticator
from voucher_ledger.http.metrics import Metrics
from voucher_ledger.http.ratelimit import SharedLimiter
from voucher_ledger.projections.projector import ProjectionStatus
from voucher_ledger.service.stack import NatsLink, Processors, StreamReader

# set by create_app
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI_JSON = web.AppKey("openapi_json", str)

# set once their component has started
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
CATALOG = web.AppKey("catalog", CatalogSource)
NATS = web.AppKey("nats", NatsLink)
POOL = web.AppKey("pool", asyncpg.Pool)
STATUS = web.AppKey("projection_status", ProjectionStatus)
PROCESSORS = web.AppKey("processors", Processors)
BUS = web.AppKey("bus", CommandBus)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyKeys)
READER = web.AppKey("stream_reader", StreamReader)
CHECKOUT = web.AppKey("checkout", CheckoutService)
PAYMENTS = web.AppKey("payments", PaymentSettings)  # the Stripe keys in force, their client
LIMITER = web.AppKey("preview_limiter", SharedLimiter)
PROMO_LIMITER = web.AppKey("promo_refusal_limiter", SharedLimiter)
