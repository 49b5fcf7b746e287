"""The voucher operations: issue, list, revoke, the public preview, a voucher's detail (now or
``?at=`` a past time), its history and its redemptions; the issuer check and the command send
they share (``http/billing.py`` uses them too).

Writes go to the command bus and answer once the read models have applied the write's event
(read-your-writes, bounded by READ_YOUR_WRITES_TIMEOUT).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import asyncpg
from aiohttp import web

from voucher_ledger.commands.bus import BusError, BusUnavailable, CommandTimeout
from voucher_ledger.commands.idempotency import IdempotencyUnavailable, KeyReused
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.http.asof import parse_at, voucher_detail_at
from voucher_ledger.http.auth import ISSUER_ROLES, AuthError, Principal
from voucher_ledger.http.errors import ApiError, int_query, ok, parse_body, route_name
from voucher_ledger.http.keys import (
    AUTHENTICATOR,
    BUS,
    IDEMPOTENCY,
    LIMITER,
    METRICS,
    POOL,
    READER,
    SETTINGS,
    STATUS,
)
from voucher_ledger.http.models import (
    HistoryEntry,
    HistoryOut,
    IssueVoucherBody,
    OkOut,
    PreviewBody,
    PreviewOut,
    RedemptionOut,
    RedemptionsOut,
    VoucherDetail,
    VoucherOut,
)
from voucher_ledger.http.openapi import MAX_AFTER_SEQ, MAX_OFFSET, RESERVED_SEGMENTS
from voucher_ledger.http.paging import LIST_HEADERS, page_headers
from voucher_ledger.http.ratelimit import too_many_requests
from voucher_ledger.ledger.codes import normalise_code, normalise_search, validate_command_id
from voucher_ledger.ledger.commands import (
    CampaignCommandT,
    GlobalCommandT,
    IssueVoucher,
    RevokeVoucher,
)
from voucher_ledger.ledger.durations import format_duration, gives
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Actor, DiscountTerms, UnknownEventVersion, upcast
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.ledger.voucher import VoucherCommandT, refusal
from voucher_ledger.projections import queries

# What the HTTP side sends (a global voucher's commands only at the hub, issue #22).
SentCommand = VoucherCommandT | CampaignCommandT | GlobalCommandT
ISSUER_FORBIDDEN = "superadmin or sovereign-admin role required"
LIST_STATUSES = ("live", "revoked")
# The voucher list's totals beside X-Total-Count (the console's counter cards read them).
TOTAL_ACTIVE = "X-Total-Active"
TOTAL_REDEMPTIONS = "X-Total-Redemptions"
TOTAL_CREDIT = "X-Total-Credit-Baisa"
VOUCHER_LIST_HEADERS: dict[str, Any] = {
    **LIST_HEADERS,
    TOTAL_ACTIVE: {
        "description": "how many of the matching vouchers are active",
        "schema": {"type": "integer", "minimum": 0},
    },
    TOTAL_REDEMPTIONS: {
        "description": "the matching vouchers' redemptions (times_redeemed summed)",
        "schema": {"type": "integer", "minimum": 0},
    },
    TOTAL_CREDIT: {
        "description": "the credit those redemptions granted, at each voucher's current "
        "credit, in baisa",
        "schema": {"type": "integer", "minimum": 0},
    },
}


# ------------------------------------------------------------------------------------ helpers


async def authenticate(request: web.Request) -> Principal:
    """The bearer token's principal; 401 without a valid one."""
    authenticator = request.app[AUTHENTICATOR]
    try:
        return await authenticator.authenticate(request.headers.get("Authorization"))
    except AuthError as exc:
        raise ApiError(401, exc.message, {"WWW-Authenticate": "Bearer"}) from exc


async def require_issuer(request: web.Request) -> Principal:
    principal = await authenticate(request)
    if not principal.has_any(ISSUER_ROLES):
        raise ApiError(403, ISSUER_FORBIDDEN)
    return principal


def path_code(request: web.Request) -> str:
    try:
        return normalise_code(request.match_info.get("code", ""))
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc


async def command_id_from(request: web.Request, command: SentCommand) -> str | None:
    """The Idempotency-Key as command id, after claiming it for this exact request."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    try:
        key = validate_command_id(key)
    except InvalidInput as exc:
        raise ApiError(400, f"Idempotency-Key: {exc.message}") from exc
    keys = request.app[IDEMPOTENCY]
    fingerprint = keys.fingerprint(request.method, route_name(request), command.model_dump_json())
    try:
        await keys.claim(key, fingerprint)
    except KeyReused as exc:
        raise ApiError(409, "Idempotency-Key was already used for a different request") from exc
    except IdempotencyUnavailable as exc:
        raise ApiError(503, "the ledger is unavailable; retry later", {"Retry-After": "2"}) from exc
    return key


async def send(
    request: web.Request, command: SentCommand, principal: Principal
) -> Accepted | Rejected:
    metrics = request.app[METRICS]
    actor = Actor(sub=principal.sub, role=principal.role)
    try:
        reply = await request.app[BUS].send(
            command,
            actor=actor,
            command_id=await command_id_from(request, command) or uuid.uuid4().hex,
            timeout=request.app[SETTINGS].command_timeout,
        )
    except CommandTimeout as exc:
        metrics.count_command(command.type, "timeout")
        raise ApiError(
            503,
            "the ledger did not answer in time; retry with the same Idempotency-Key",
            {"Retry-After": "1"},
        ) from exc
    except BusUnavailable as exc:
        metrics.count_command(command.type, "unavailable")
        raise ApiError(503, "the ledger is unavailable; retry later", {"Retry-After": "2"}) from exc
    except BusError as exc:
        metrics.count_command(command.type, "error")
        raise ApiError(503, "the ledger is unavailable; retry later") from exc
    outcome = "accepted" if isinstance(reply, Accepted) else reply.reason
    metrics.count_command(command.type, outcome)
    if isinstance(reply, Accepted):
        await wait_for_projections(request, reply.seq)
    return reply


async def wait_for_projections(request: web.Request, seq: int) -> bool:
    """Read-your-writes: until every read model has applied ``seq``, at most
    READ_YOUR_WRITES_TIMEOUT."""
    timeout = request.app[SETTINGS].read_your_writes_timeout
    return await request.app[STATUS].wait_for(seq, timeout)


def _plans(value: object) -> list[str] | None:
    """The ``plans`` of a read-model row (jsonb text) or of a voucher view (a list)."""
    if value is None or isinstance(value, list):
        return value
    plans = json.loads(str(value))
    return [str(p) for p in plans]


class _Credit:
    kind: Literal["credit"] = "credit"


_CREDIT = _Credit()


def discount_of(row: dict[str, Any]) -> DiscountTerms | None:
    """A voucher row's discount terms: jsonb text from the read model, a dict from a view."""
    value = row.get("discount")
    if value is None:
        return None
    if isinstance(value, str):
        return DiscountTerms.model_validate_json(value)
    return DiscountTerms.model_validate(value)


def summary_of(row: dict[str, Any]) -> str:
    """What a voucher gives, in words: "20% off add-ons for 3 months", "25 OMR credit"."""
    return str(discount_fields(row)["summary"])


def discount_fields(row: dict[str, Any]) -> dict[str, Any]:
    return gives(row["credit_baisa"], discount_of(row))


def stored_moment(value: datetime | None) -> datetime | None:
    """A read model's moment, in UTC: PostgreSQL's -infinity and infinity come back from
    asyncpg as Python's first and last moments without a time zone (an expiry of
    9999-12-31T23:59:59.999999Z, refused at the door since, was stored as infinity)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def voucher_out(row: dict[str, Any]) -> VoucherOut:
    return VoucherOut(
        **discount_fields(row),
        code=row["code"],
        credit_omr=row["credit_baisa"] // BAISA,
        credit_baisa=row["credit_baisa"],
        description=row["description"],
        active=row["active"],
        max_redemptions=row["max_redemptions"],
        times_redeemed=row["times_redeemed"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        starts_at=stored_moment(row["starts_at"]),
        expires_at=stored_moment(row["expires_at"]),
        plans=_plans(row["plans"]),
        min_order_omr=row["min_order_baisa"] // BAISA,
        min_order_baisa=row["min_order_baisa"],
        new_organizations_only=row["new_organizations_only"],
        credit_valid_for=format_duration(row["credit_valid_for_seconds"])
        if row["credit_valid_for_seconds"]
        else None,
    )


def refusal_now(row: dict[str, Any]) -> str | None:
    """Why the voucher of ``row`` takes no redemption now (the preview's ``reason``), or None.
    A campaign's code (issue #21) is ``capped`` too when its campaign's cap or budget is; a
    global code (issue #22) is ``share_exhausted`` when this Sovereign's share is used up."""
    reason = refusal(
        active=row["active"],
        revoked=row["revoked"],
        max_redemptions=row["max_redemptions"],
        times_redeemed=row["times_redeemed"],
        starts_at=stored_moment(row["starts_at"]),
        expires_at=stored_moment(row["expires_at"]),
        now=datetime.now(UTC),
    )
    if reason is None and row.get("campaign_capped"):
        return "capped"
    # A global code (issue #22): this Sovereign's share used up; the code at its cap when the
    # hub had no slot left either.
    received = row.get("share_received")
    if (
        reason is None
        and received is not None
        and row["times_redeemed"] >= received - row["share_released"]
    ):
        return "capped" if row["share_pool_empty"] else "share_exhausted"
    return reason


def accepting(row: dict[str, Any]) -> bool:
    return refusal_now(row) is None


def _raise_rejected(reply: Rejected) -> NoReturn:
    status = {"not_found": 404, "invalid_input": 400, "command_id_reused": 409}.get(
        reply.reason, 409
    )
    raise ApiError(status, reply.message)


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.app[POOL]


# ----------------------------------------------------------------------------------- handlers


async def issue_voucher(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    # The code is normalised and the credit bounded by MAX_CREDIT_BAISA in the model, so that
    # every field's error comes in one answer.
    limit = request.app[SETTINGS].max_credit_baisa // BAISA
    body = await parse_body(request, IssueVoucherBody, {"max_credit_omr": limit})
    command = IssueVoucher(**body.terms(), active=body.active, clear=body.cleared())
    reply = await send(request, command, principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    if reply.voucher is None:  # an accepted IssueVoucher always carries the voucher
        raise RuntimeError("the processor accepted an issue without the voucher")
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
    rows, totals = await queries.list_vouchers(
        _pool(request), limit=limit, offset=offset, search=search, revoked=status == "revoked"
    )
    headers = page_headers(request, total=totals.count, offset=offset, shown=len(rows))
    headers.update(
        {
            TOTAL_ACTIVE: str(totals.active),
            TOTAL_REDEMPTIONS: str(totals.redemptions),
            TOTAL_CREDIT: str(totals.credit_baisa),
        }
    )
    return ok([voucher_out(r) for r in rows], headers=headers)


async def revoke_voucher(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    code = path_code(request)
    reply = await send(request, RevokeVoucher(code=code), principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    return ok(OkOut())


def client_address(request: web.Request) -> str:
    if request.app[SETTINGS].trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first[:64]
    return request.remote or "unknown"


async def redeem_preview(request: web.Request) -> web.Response:
    limiter = request.app[LIMITER]
    wait = await limiter.take(limiter.key("addr", client_address(request)))
    if wait > 0:
        return too_many_requests(wait)
    body = await parse_body(request, PreviewBody)
    if not body.code.strip():
        raise ApiError(400, "code is required")
    try:
        code = normalise_code(body.code)
    except InvalidInput:
        # A code no voucher can have (PROMO.2026, SPRING SALE, AB, 80 characters) cannot exist:
        # the same 404 as an unknown one, as the seed answered (its landing page reads anything
        # but 200/404/410 as an outage). Issuing such a code stays a 400 naming the rule.
        row = None
    else:
        row = await queries.get_voucher(_pool(request), code)
    if row is None or row["revoked"]:
        raise ApiError(404, "voucher not valid")  # unknown, malformed and revoked look the same
    reason = refusal_now(row)
    preview = PreviewOut(
        code=row["code"],
        credit_omr=row["credit_baisa"] // BAISA,
        description=row["description"],
        active=row["active"],
        accepting_redemptions=reason is None,
        starts_at=stored_moment(row["starts_at"]),
        expires_at=stored_moment(row["expires_at"]),
        kind=(discount_of(row) or _CREDIT).kind,
        summary=summary_of(row),
        reason=reason,
    )
    # 410 says why (the landing page's "ended on ..." / "starts on ..."); a 200 has no reason.
    text = preview.model_dump_json(exclude={"reason"} if reason is None else None)
    return web.Response(
        text=text, status=200 if reason is None else 410, content_type="application/json"
    )


async def get_voucher(request: web.Request) -> web.Response:
    if request.match_info.get("code", "") in RESERVED_SEGMENTS:
        # /billing/vouchers/issue with the wrong method: a route, not a voucher named "issue"
        # (the code "ISSUE" is still reachable here in upper case, and under every other route).
        # The middleware names the methods served at this path (the route table's).
        raise web.HTTPMethodNotAllowed(request.method, [])
    code = path_code(request)
    await require_issuer(request)
    if "at" in request.query:  # time travel: folded from the event stream
        raw_at = parse_at(request.query.getall("at"))
        return ok(await voucher_detail_at(request.app[READER], code, raw_at))
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
        # As every reader sees them: an event stored at an older version, upcast to the
        # current one (a voucher.issued v1 shows the v2 fields with their defaults).
        event = envelope.get("event", {})
        with contextlib.suppress(UnknownEventVersion):  # else shown as stored
            event = upcast(event)
        events.append(
            HistoryEntry(
                seq=r["seq"],
                type=r["type"],
                version=int(event.get("version", r["version"])),
                occurred_at=r["occurred_at"],
                actor={"sub": r["actor_sub"], "role": r["actor_role"]},
                command_id=r["command_id"],
                event=event,
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
            user_id=r["user_id"],
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
