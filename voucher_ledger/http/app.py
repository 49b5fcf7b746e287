"""``create_app(stack) -> web.Application``: the billing voucher API.

Routes (errors are always ``{"error": "..."}``):

* issuers (``superadmin`` / ``sovereign-admin``): ``POST /billing/vouchers/issue``,
  ``GET /billing/vouchers/list``, ``DELETE /billing/vouchers/revoke/{code}``, the legacy
  ``GET|POST /billing/admin/promos`` and ``DELETE /billing/admin/promos/{code}``,
  ``GET /billing/vouchers/{code}``, ``.../history``, ``.../redemptions``;
* public: ``POST /billing/vouchers/redeem-preview`` (rate-limited per client address),
  ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``;
* pages (``http/pages.py``, not API operations): ``/console/`` and ``/redeem``.

Writes go to the command bus and answer once the read models have applied the write's event
(read-your-writes, bounded by READ_YOUR_WRITES_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel

from voucher_ledger.commands.bus import BusError, BusUnavailable, CommandTimeout
from voucher_ledger.commands.idempotency import IdempotencyUnavailable, KeyReused
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.http import billing, pages
from voucher_ledger.http.asof import parse_at, voucher_detail_at
from voucher_ledger.http.auth import ISSUER_ROLES, AuthError, Principal
from voucher_ledger.http.errors import ApiError, int_query, parse_body
from voucher_ledger.http.keys import LIMITER, METRICS, STACK
from voucher_ledger.http.metrics import Metrics
from voucher_ledger.http.models import (
    HealthOut,
    HistoryEntry,
    HistoryOut,
    IssueVoucherBody,
    OkOut,
    PreviewBody,
    PreviewOut,
    ReadyOut,
    RedemptionOut,
    RedemptionsOut,
    VoucherDetail,
    VoucherOut,
)
from voucher_ledger.http.openapi import (
    MAX_AFTER_SEQ,
    MAX_OFFSET,
    RESERVED_SEGMENTS,
    build_openapi,
)
from voucher_ledger.http.ratelimit import RateLimiter
from voucher_ledger.ledger.codes import normalise_code, normalise_search, validate_command_id
from voucher_ledger.ledger.commands import IssueVoucher, RevokeVoucher
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.ledger.voucher import VoucherCommandT
from voucher_ledger.projections import queries
from voucher_ledger.service.stack import Stack

log = logging.getLogger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ISSUER_FORBIDDEN = "superadmin or sovereign-admin role required"
LIST_STATUSES = ("live", "revoked")


def _documented_methods() -> dict[str, str]:
    """Static path -> the Allow header of its documented methods."""
    allowed = {}
    for path, operations in build_openapi()["paths"].items():
        if "{" not in path:
            methods = {method.upper() for method in operations}
            if "GET" in methods:
                methods.add("HEAD")
            allowed[path] = ",".join(sorted(methods))
    return allowed


_DOCUMENTED_METHODS = _documented_methods()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def ok(model: BaseModel | list[BaseModel], status: int = 200) -> web.Response:
    if isinstance(model, list):
        body = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        body = model.model_dump_json()
    return web.Response(text=body, status=status, content_type="application/json")


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


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
        return error(exc.status, exc.message, exc.headers)
    except queries.ReadModelUnavailable:
        status = 503
        log.warning("read models unavailable on %s %s", request.method, _route_name(request))
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
        log.debug("client went away during %s %s", request.method, _route_name(request))
        return error(400, "connection lost")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, _route_name(request))
        return error(500, "internal server error")
    finally:
        request.app[METRICS].observe_request(
            request.method, _route_name(request), status, time.perf_counter() - started
        )


# ------------------------------------------------------------------------------------ helpers


async def require_issuer(request: web.Request) -> Principal:
    stack = request.app[STACK]
    assert stack.authenticator is not None
    try:
        principal = await stack.authenticator.authenticate(request.headers.get("Authorization"))
    except AuthError as exc:
        raise ApiError(401, exc.message, {"WWW-Authenticate": "Bearer"}) from exc
    if not principal.has_any(ISSUER_ROLES):
        raise ApiError(403, ISSUER_FORBIDDEN)
    return principal


def path_code(request: web.Request) -> str:
    try:
        return normalise_code(request.match_info.get("code", ""))
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc


async def command_id_from(request: web.Request, command: VoucherCommandT) -> str | None:
    """The Idempotency-Key as command id, after claiming it for this exact request."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    try:
        key = validate_command_id(key)
    except InvalidInput as exc:
        raise ApiError(400, f"Idempotency-Key: {exc.message}") from exc
    keys = request.app[STACK].idempotency
    if keys is None:
        raise ApiError(503, "idempotency keys unavailable")
    fingerprint = keys.fingerprint(request.method, _route_name(request), command.model_dump_json())
    try:
        await keys.claim(key, fingerprint)
    except KeyReused as exc:
        raise ApiError(409, "Idempotency-Key was already used for a different request") from exc
    except IdempotencyUnavailable as exc:
        raise ApiError(503, "the ledger is unavailable; retry later", {"Retry-After": "2"}) from exc
    return key


async def send(
    request: web.Request, command: VoucherCommandT, principal: Principal
) -> Accepted | Rejected:
    stack = request.app[STACK]
    metrics = request.app[METRICS]
    assert stack.bus is not None
    actor = Actor(sub=principal.sub, role=principal.role)
    try:
        reply = await stack.bus.send(
            command,
            actor=actor,
            command_id=await command_id_from(request, command) or uuid.uuid4().hex,
            timeout=stack.settings.command_timeout,
        )
    except CommandTimeout as exc:
        metrics.commands[(command.type, "timeout")] += 1
        raise ApiError(
            503,
            "the ledger did not answer in time; retry with the same Idempotency-Key",
            {"Retry-After": "1"},
        ) from exc
    except BusUnavailable as exc:
        metrics.commands[(command.type, "unavailable")] += 1
        raise ApiError(503, "the ledger is unavailable; retry later", {"Retry-After": "2"}) from exc
    except BusError as exc:
        metrics.commands[(command.type, "error")] += 1
        raise ApiError(503, "the ledger is unavailable; retry later") from exc
    outcome = "accepted" if isinstance(reply, Accepted) else reply.reason
    metrics.commands[(command.type, outcome)] += 1
    if isinstance(reply, Accepted):
        await stack.wait_for_projections(reply.seq)
    return reply


def voucher_out(row: dict[str, Any]) -> VoucherOut:
    return VoucherOut(
        code=row["code"],
        credit_omr=row["credit_baisa"] // BAISA,
        credit_baisa=row["credit_baisa"],
        description=row["description"],
        active=row["active"],
        max_redemptions=row["max_redemptions"],
        times_redeemed=row["times_redeemed"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def accepting(row: dict[str, Any]) -> bool:
    cap = row["max_redemptions"]
    return bool(row["active"] and not row["revoked"] and (cap == 0 or row["times_redeemed"] < cap))


def _raise_rejected(reply: Rejected) -> None:
    status = {"not_found": 404, "invalid_input": 400, "command_id_reused": 409}.get(
        reply.reason, 409
    )
    raise ApiError(status, reply.message)


def _pool(request: web.Request) -> Any:
    pool = request.app[STACK].pool
    if pool is None:
        raise ApiError(503, "read models unavailable")
    return pool


# ----------------------------------------------------------------------------------- handlers


async def issue_voucher(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    body = await parse_body(request, IssueVoucherBody)
    try:
        code = normalise_code(body.code)
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc
    stack = request.app[STACK]
    credit = body.credit_omr * BAISA
    if credit > stack.settings.max_credit_baisa:
        limit = stack.settings.max_credit_baisa // BAISA
        raise ApiError(400, f"credit_omr must be at most {limit}")
    command = IssueVoucher(
        code=code,
        credit_baisa=credit,
        description=body.description,
        active=body.active,
        max_redemptions=body.max_redemptions,
    )
    reply = await send(request, command, principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    assert isinstance(reply, Accepted)
    assert reply.voucher is not None
    # The voucher as this write left it (its receipt): a replayed Idempotency-Key returns the
    # original answer even after later updates. The read models have applied it by now.
    return ok(voucher_out(reply.voucher.model_dump()))


async def list_vouchers(request: web.Request) -> web.Response:
    await require_issuer(request)
    limit = int_query(request, "limit", 1000, 1, 1000)
    offset = int_query(request, "offset", 0, 0, MAX_OFFSET)
    search = request.query.get("q")
    if search is not None:
        try:
            search = normalise_search(search)
        except InvalidInput as exc:
            raise ApiError(400, exc.message) from exc
    status = request.query.get("status", "live")
    if status not in LIST_STATUSES:
        raise ApiError(400, "status must be live or revoked")
    rows = await queries.list_vouchers(
        _pool(request), limit=limit, offset=offset, search=search, revoked=status == "revoked"
    )
    return ok([voucher_out(r) for r in rows])


async def revoke_voucher(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    code = path_code(request)
    reply = await send(request, RevokeVoucher(code=code), principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    return ok(OkOut())


def client_address(request: web.Request) -> str:
    if request.app[STACK].settings.trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first[:64]
    return request.remote or "unknown"


async def redeem_preview(request: web.Request) -> web.Response:
    wait = request.app[LIMITER].check(client_address(request))
    if wait > 0:
        retry = RateLimiter.retry_after_header(wait)
        return web.json_response(
            {"error": "too many requests", "retry_after": int(retry)},
            status=429,
            headers={"Retry-After": retry},
        )
    body = await parse_body(request, PreviewBody)
    try:
        code = normalise_code(body.code)
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc
    row = await queries.get_voucher(_pool(request), code)
    if row is None or row["revoked"]:
        raise ApiError(404, "voucher not valid")  # unknown and revoked look the same
    preview = PreviewOut(
        code=row["code"],
        credit_omr=row["credit_baisa"] // BAISA,
        description=row["description"],
        active=row["active"],
        accepting_redemptions=accepting(row),
    )
    return ok(preview, status=200 if preview.accepting_redemptions else 410)


async def get_voucher(request: web.Request) -> web.Response:
    if request.match_info.get("code", "") in RESERVED_SEGMENTS:
        # /billing/vouchers/issue with the wrong method: a route, not a voucher named "issue"
        # (the code "ISSUE" is still reachable here in upper case, and under every other route).
        allowed = _DOCUMENTED_METHODS.get(request.path, "")
        raise web.HTTPMethodNotAllowed(request.method, [m for m in allowed.split(",") if m])
    code = path_code(request)
    await require_issuer(request)
    if "at" in request.query:  # time travel: folded from the event stream
        raw_at = parse_at(request.query.getall("at"))
        return ok(await voucher_detail_at(request.app[STACK], code, raw_at))
    row = await queries.get_voucher(_pool(request), code)
    if row is None:
        raise ApiError(404, "voucher not found")
    detail = VoucherDetail(
        **voucher_out(row).model_dump(),
        revoked=row["revoked"],
        revoked_at=row["revoked_at"],
        accepting_redemptions=accepting(row),
        last_seq=row["last_seq"],
    )
    return ok(detail)


async def _code_page(request: web.Request) -> tuple[Any, str, int, int]:
    """Issuer check, the path's code (404 when unknown), and ``after_seq`` / ``limit``."""
    await require_issuer(request)
    code = path_code(request)
    after = int_query(request, "after_seq", 0, 0, MAX_AFTER_SEQ)
    limit = int_query(request, "limit", 100, 1, 1000)
    pool = _pool(request)
    if await queries.get_voucher(pool, code) is None:
        raise ApiError(404, "voucher not found")
    return pool, code, after, limit


async def voucher_history(request: web.Request) -> web.Response:
    pool, code, after, limit = await _code_page(request)
    rows = await queries.history(pool, code, after_seq=after, limit=limit)
    events = []
    for r in rows:
        envelope = json.loads(r["event"])
        events.append(
            HistoryEntry(
                seq=r["seq"],
                type=r["type"],
                version=r["version"],
                occurred_at=r["occurred_at"],
                actor={"sub": r["actor_sub"], "role": r["actor_role"]},
                command_id=r["command_id"],
                event=envelope.get("event", {}),
            )
        )
    next_after = events[-1].seq if len(events) == limit else None
    return ok(HistoryOut(code=code, events=events, next_after_seq=next_after))


async def voucher_redemptions(request: web.Request) -> web.Response:
    pool, code, after, limit = await _code_page(request)
    rows = await queries.redemptions(pool, code, after_seq=after, limit=limit)
    items = [
        RedemptionOut(
            redemption_id=r["redemption_id"],
            customer_id=r["customer_id"],
            credit_omr=r["credit_baisa"] // BAISA,
            credit_baisa=r["credit_baisa"],
            redeemed_at=r["redeemed_at"],
            seq=r["seq"],
            reversed_at=r["reversed_at"],
            reversal_reason=r["reversal_reason"],
        )
        for r in rows
    ]
    next_after = items[-1].seq if len(items) == limit else None
    return ok(RedemptionsOut(code=code, redemptions=items, next_after_seq=next_after))


async def healthz(request: web.Request) -> web.Response:
    stack = request.app[STACK]
    nats_ok = stack.nc is not None and stack.nc.is_connected
    report = await stack.processor_report() if nats_ok else None
    return ok(
        HealthOut(
            status="ok" if nats_ok else "degraded",
            nats="connected" if nats_ok else "disconnected",
            processor_partitions=report.partitions if report is not None else [],
        )
    )


async def readyz(request: web.Request) -> web.Response:
    stack = request.app[STACK]
    checks: dict[str, Any] = {}
    checks["nats"] = bool(stack.nc is not None and stack.nc.is_connected)
    try:
        assert stack.pool is not None
        await asyncio.wait_for(stack.pool.fetchval("SELECT 1"), 2)
        checks["postgres"] = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = False
    lag = await stack.projection_lag()
    checks["projection_lag"] = lag
    failing = dict(stack.status.failing) if stack.status is not None else {}
    checks["projections_failing"] = failing
    ready = (
        checks["nats"]
        and checks["postgres"]
        and lag is not None
        and max(lag.values()) < 10_000
        and not failing
    )
    return ok(ReadyOut(ready=bool(ready), checks=checks), status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    stack = request.app[STACK]
    gauges: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    lag = await stack.projection_lag()
    if lag is not None:
        gauges["voucher_ledger_projection_lag_events"] = [
            ((("projection", name),), float(value)) for name, value in sorted(lag.items())
        ]
    counters: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    report = await stack.processor_report()
    if report is not None:
        stats = report.stats
        counters["voucher_ledger_processor_commands_total"] = [
            ((("type", t), ("outcome", o)), float(n))
            for (t, o), n in sorted(stats.commands.items())
        ]
        counters["voucher_ledger_processor_conflicts_total"] = [((), float(stats.conflicts))]
        counters["voucher_ledger_processor_events_appended_total"] = [
            ((), float(stats.events_appended))
        ]
        # Appends that stored events: events_appended / appends is the mean events per append.
        counters["voucher_ledger_processor_appends_total"] = [((), float(stats.appends))]
        counters["voucher_ledger_processor_append_seconds_total"] = [
            ((), round(stats.append_seconds, 6))
        ]
        gauges["voucher_ledger_processor_partitions_held"] = [((), float(len(report.partitions)))]
    text = request.app[METRICS].render(gauges, counters)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    limit = request.app[STACK].settings.max_credit_baisa // BAISA
    return web.json_response(build_openapi(max_credit_omr=limit))


def create_app(stack: Stack) -> web.Application:
    settings = stack.settings
    app = web.Application(middlewares=[json_errors], client_max_size=settings.body_limit)
    app[STACK] = stack
    app[METRICS] = Metrics()
    app[LIMITER] = RateLimiter(settings.preview_rate_per_minute, settings.preview_burst)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    r.add_post("/billing/vouchers/issue", issue_voucher)
    r.add_get("/billing/vouchers/list", list_vouchers)
    r.add_delete("/billing/vouchers/revoke/{code}", revoke_voucher)
    r.add_post("/billing/vouchers/redeem-preview", redeem_preview)
    r.add_get("/billing/admin/promos", list_vouchers)
    r.add_post("/billing/admin/promos", issue_voucher)
    r.add_delete("/billing/admin/promos/{code}", revoke_voucher)
    r.add_get("/billing/vouchers/{code}/history", voucher_history)
    r.add_get("/billing/vouchers/{code}/redemptions", voucher_redemptions)
    r.add_get("/billing/vouchers/{code}", get_voucher)
    billing.add_routes(app)
    pages.add_routes(app, settings.redeem_continue_url)
    return app
