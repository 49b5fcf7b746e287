"""``create_app(stack) -> web.Application``: routes, JSON errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from voucher_ledger.runtime import Stack

log = logging.getLogger(__name__)

STACK = web.AppKey("stack", Stack)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is ``{"error": ...}``; nothing escapes as an HTML page or a bare 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        resp = error(exc.status, exc.reason.lower())
        resp.headers.update(headers)
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal server error")


async def healthz(request: web.Request) -> web.Response:
    stack = request.app[STACK]
    nats_ok = stack.nc is not None and stack.nc.is_connected
    body = {
        "status": "ok" if nats_ok else "degraded",
        "nats": "connected" if nats_ok else "disconnected",
        "processor_partitions": sorted(stack.host.partitions) if stack.host else [],
    }
    return web.json_response(body, status=200)


def create_app(stack: Stack) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=64 * 1024)
    app[STACK] = stack
    app.router.add_get("/healthz", healthz)
    return app
