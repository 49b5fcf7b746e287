"""``create_app(settings) -> web.Application``: the billing voucher API.

Routes (``http/routes.py``, one declaration per operation; errors are always
``{"error": "..."}``):

* issuers (``superadmin`` / ``sovereign-admin``): ``POST /billing/vouchers/issue``,
  ``GET /billing/vouchers/list``, ``DELETE /billing/vouchers/revoke/{code}``, the legacy
  ``GET|POST /billing/admin/promos`` and ``DELETE /billing/admin/promos/{code}``,
  ``GET /billing/vouchers/{code}``, ``.../history``, ``.../redemptions`` (``http/vouchers.py``);
* customers: checkout and the balance; the Stripe webhook (``http/billing.py``);
* public: ``POST /billing/vouchers/redeem-preview`` (rate-limited per client address),
  ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` (``http/ops.py``);
* pages (``http/pages.py``, not API operations): ``/console/`` and ``/redeem``.

The service's components (``service/stack.py``) start in ``app.cleanup_ctx``, in order, and
stop in the reverse order once the HTTP server has stopped; each is stored under its own typed
key (``http/keys.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from voucher_ledger.config.settings import Settings
from voucher_ledger.http import keys, pages
from voucher_ledger.http.access import access_log
from voucher_ledger.http.errors import ApiError, error, route_name
from voucher_ledger.http.keys import METRICS
from voucher_ledger.http.metrics import Metrics
from voucher_ledger.http.routes import add_routes, allowed_methods, build_openapi
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.projections import queries
from voucher_ledger.service.globals import Federation
from voucher_ledger.service.stack import (
    Checkout,
    Ledger,
    Limiters,
    NatsLink,
    Projectors,
    ReadModels,
    Servers,
    StreamReader,
    WebClients,
    start_processors,
)

log = logging.getLogger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DOCUMENTED_METHODS = allowed_methods()


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is ``{"error": ...}``; no input yields an HTML page or a bare 500."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return error(exc.status, exc.message, exc.headers, exc.fields)
    except queries.ReadModelUnavailable:
        status = 503
        log.warning("read models unavailable on %s %s", request.method, route_name(request))
        return error(503, "read models unavailable; retry later", {"Retry-After": "2"})
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        if exc.status == 405 and request.path in _DOCUMENTED_METHODS:
            # aiohttp's Allow is the union over every matching resource, and a static path such
            # as /billing/vouchers/issue also matches /billing/vouchers/{code}; say what is
            # really served there.
            headers["Allow"] = _DOCUMENTED_METHODS[request.path]
        message = {
            404: "not found",
            405: "method not allowed",
            413: "request body too large",
        }.get(exc.status, exc.reason.lower())
        return error(exc.status, message, headers)
    except (RequestPayloadError, HttpProcessingError):
        # A body aiohttp could not decode (a broken gzip/deflate stream, a bad chunk): the
        # exception's text quotes the input, so it is not logged.
        status = 400
        response = error(400, "malformed request body")
        response.force_close()  # the rest of the body is unusable; so is the connection
        return response
    except ConnectionResetError:
        status = 400  # the client hung up mid-request: nobody reads this answer
        log.debug("client went away during %s %s", request.method, route_name(request))
        return error(400, "connection lost")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, route_name(request))
        return error(500, "internal server error")
    finally:
        request.app[METRICS].observe_request(
            request.method, route_name(request), status, time.perf_counter() - started
        )


# --------------------------------------------------------------------------------- lifecycles


# Components the handlers do not use, kept for the components that start after them.
_SERVERS = web.AppKey("servers", Servers)
_READ_MODELS = web.AppKey("read_models", ReadModels)
_WEB_CLIENTS = web.AppKey("web_clients", WebClients)
_LEDGER = web.AppKey("ledger", Ledger)
_PROCESSORS_IN_CHILD = web.AppKey("processors_in_child", bool)


def servers_of(app: web.Application) -> Servers:
    """The started app's nats-server and PostgreSQL (their URLs), for ``serve`` to publish."""
    return app[_SERVERS]


async def web_clients(app: web.Application) -> AsyncIterator[None]:
    clients = await WebClients.open(app[keys.SETTINGS])  # a configuration error before servers
    app[_WEB_CLIENTS] = clients
    app[keys.AUTHENTICATOR] = clients.authenticator
    app[keys.CATALOG] = clients.catalog
    try:
        yield
    finally:
        await clients.close()


async def servers(app: web.Application) -> AsyncIterator[None]:
    started = app[_SERVERS] = await Servers.start(app[keys.SETTINGS])
    try:
        yield
    finally:
        await started.stop()  # nats-server, then PostgreSQL


async def nats(app: web.Application) -> AsyncIterator[None]:
    started = app[_SERVERS]
    link = app[keys.NATS] = await NatsLink.open(
        app[keys.SETTINGS],
        started.nats_url,
        started.credentials("service"),
        admin=started.credentials("admin"),
        federate=True,
    )
    try:
        yield
    finally:
        await link.close()


async def read_models(app: web.Application) -> AsyncIterator[None]:
    read = app[_READ_MODELS] = await ReadModels.open(app[_SERVERS].database_url)
    app[keys.POOL] = read.pool
    app[keys.STATUS] = read.status
    try:
        yield
    finally:
        await read.close()


async def projectors(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.run_projectors:
        yield
        return
    running = await Projectors.start(settings, app[keys.NATS], app[_READ_MODELS])
    try:
        yield
    finally:
        await running.stop()


async def processors(app: web.Application) -> AsyncIterator[None]:
    running = app[keys.PROCESSORS] = await start_processors(
        app[keys.SETTINGS], app[keys.NATS], app[_SERVERS], in_child=app[_PROCESSORS_IN_CHILD]
    )
    try:
        yield
    finally:
        await running.stop()


async def ledger(app: web.Application) -> AsyncIterator[None]:
    opened = app[_LEDGER] = await Ledger.open(app[keys.NATS])
    app[keys.BUS] = opened.bus
    app[keys.IDEMPOTENCY] = opened.idempotency
    try:
        yield
    finally:
        await opened.close()


async def reader(app: web.Application) -> AsyncIterator[None]:
    opened = app[keys.READER] = StreamReader(app[keys.NATS])
    try:
        yield
    finally:
        await opened.close()


async def checkout(app: web.Application) -> AsyncIterator[None]:
    running = Checkout.start(app[keys.SETTINGS], app[_WEB_CLIENTS], app[_LEDGER], app[_READ_MODELS])
    app[keys.CHECKOUT] = running.service
    app[keys.PAYMENTS] = running.payments
    try:
        yield
    finally:
        await running.stop()


async def federation(app: web.Application) -> AsyncIterator[None]:
    """A hub's allocator or a Sovereign's share inbox (issue #22, ``service/globals.py``)."""
    link = app[keys.NATS]
    running = Federation.start(app[keys.SETTINGS], link.nc, app[keys.BUS], link.spec.layout)
    try:
        yield
    finally:
        await running.stop()


async def limiters(app: web.Application) -> AsyncIterator[None]:
    opened = Limiters.open(app[keys.SETTINGS], app[keys.NATS])
    app[keys.LIMITER] = opened.preview
    app[keys.PROMO_LIMITER] = opened.promo_refusals
    try:
        yield
    finally:
        await opened.close()


# In start order; they stop in the reverse order, after the HTTP server: the processors, then
# nats-server and PostgreSQL (the README's shutdown order).
COMPONENTS = (
    web_clients,
    servers,
    nats,
    read_models,
    projectors,
    processors,
    ledger,
    reader,
    limiters,
    checkout,
    federation,
)


def create_app(
    settings: Settings, *, processors_in_child: bool = False, components: bool = True
) -> web.Application:
    """The application. Nothing connects here: the components start with the app (``serve``'s
    runner, or a test server). ``processors_in_child``: the processors run in a child process
    (``serve``'s default, PROCESSOR_PROCESS); ``components=False``: the routes and middleware
    alone, for tests of what needs no server (the pages, the router)."""
    app = web.Application(
        middlewares=[access_log, json_errors], client_max_size=settings.body_limit
    )
    app[keys.SETTINGS] = settings
    app[METRICS] = Metrics()
    limit = settings.max_credit_baisa // BAISA
    app[keys.OPENAPI_JSON] = json.dumps(build_openapi(max_credit_omr=limit))
    app[_PROCESSORS_IN_CHILD] = processors_in_child
    if components:
        app.cleanup_ctx.extend(COMPONENTS)
    add_routes(app.router)
    pages.add_routes(app, settings.redeem_continue_url)
    return app
