"""The access log and the request id: one line per request, and ``X-Request-ID`` on every answer.

The line names the method, the matched route's template (``/billing/vouchers/{code}``, never the
path as sent: a code or a query string value may be a secret), the status, the duration in
milliseconds and the request id; never a header, a token, a query string or a body. Its fields
are also on the record (``access_fields``), for ``LOG_FORMAT=json``.

``X-Request-ID``: the client's when it is sane (1-128 characters of ``[A-Za-z0-9._:-]``, starting
with a letter or digit; the seed echoed any), else a new uuid4 hex; the answer always carries it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from voucher_ledger.http.errors import route_name

REQUEST_ID = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

log = logging.getLogger("voucher_ledger.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(sent: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if sent is not None and _SANE_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the status the error middleware answered (or a redirect raised)."""
    started = time.perf_counter()
    rid = request_id(request.headers.get(REQUEST_ID))
    status = 500
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect (the error middleware answers the rest)
        status = exc.status
        exc.headers[REQUEST_ID] = rid
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's number for it)
        raise
    else:
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID] = rid
        return response
    finally:
        if log.isEnabledFor(logging.INFO):
            ms = (time.perf_counter() - started) * 1000
            route = route_name(request)
            log.info(
                "%s %s %d %.1f ms request_id=%s",
                request.method,
                route,
                status,
                ms,
                rid,
                extra={
                    "access_fields": {
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(ms, 1),
                        "request_id": rid,
                    }
                },
            )
