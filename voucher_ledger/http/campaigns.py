"""The campaign operations (issue #21): create, list, show with figures, generate codes,
download the codes as CSV, revoke. Issuers only (as for vouchers).

Writes go through the command bus to the campaign's processor and answer once the read models
have applied them (``vouchers.send``). A generation's codes are drawn by the processor (a
100,000-code reply would not fit a NATS message): the answer reads them back from the read
model by the generation's command id (the ``Idempotency-Key``, so a retry answers the same
codes).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from aiohttp import web

from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.http.campaign_models import (
    CampaignDetail,
    CampaignOut,
    CodesOut,
    CreateCampaignBody,
    GenerateCodesBody,
    TimelinePoint,
)
from voucher_ledger.http.errors import ApiError, int_query, ok, parse_body
from voucher_ledger.http.keys import POOL, SETTINGS
from voucher_ledger.http.models import OkOut
from voucher_ledger.http.openapi import MAX_OFFSET
from voucher_ledger.http.paging import page_headers
from voucher_ledger.http.vouchers import discount_fields, require_issuer, send, stored_moment
from voucher_ledger.ledger.campaign_codes import new_campaign_id, validate_campaign_id
from voucher_ledger.ledger.codes import validate_command_id
from voucher_ledger.ledger.commands import CreateCampaign, GenerateCampaignCodes, RevokeCampaign
from voucher_ledger.ledger.durations import format_duration
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.ledger.voucher import window_refusal
from voucher_ledger.projections import campaign_queries

CSV_HEADER = ("code", "status", "redeemed_by", "redeemed_at")
_CREATE_ATTEMPTS = 3  # a random campaign id already taken (one in 10^8) is drawn again


def path_campaign(request: web.Request) -> str:
    try:
        return validate_campaign_id(request.match_info.get("campaign_id", ""))
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc


def _raise_rejected(reply: Rejected) -> NoReturn:
    status = {
        "not_found": 404,
        "invalid_input": 400,
        "already_exists": 409,
        "campaign_code": 409,
        "command_id_reused": 409,
    }.get(reply.reason, 409)
    raise ApiError(status, reply.message)


def _seeded(seed: str) -> Callable[[int], bytes]:
    """Bytes drawn from ``seed`` (an Idempotency-Key): the same campaign id on a retry."""
    stream = hashlib.shake_256(seed.encode()).digest(4096)
    position = 0

    def take(n: int) -> bytes:
        nonlocal position
        if position + n > len(stream):
            raise InvalidInput("Idempotency-Key", "no campaign id could be drawn from this key")
        out = stream[position : position + n]
        position += n
        return out

    return take


def campaign_out(row: dict[str, Any], cls: type[CampaignOut] = CampaignOut, **extra: Any) -> Any:
    budget = row["budget_baisa"]
    left = None if budget is None else budget - row["granted_baisa"]
    live = row["active"] and not row["revoked"]
    capped = (row["max_redemptions"] and row["times_redeemed"] >= row["max_redemptions"]) or (
        left is not None and left < row["credit_baisa"]
    )
    starts_at, expires_at = stored_moment(row["starts_at"]), stored_moment(row["expires_at"])
    window = window_refusal(starts_at, expires_at, datetime.now(UTC))
    plans = row["plans"]
    if isinstance(plans, str):  # jsonb as its text
        plans = json.loads(plans)
    valid_for = row["credit_valid_for_seconds"]
    return cls(
        campaign_id=row["campaign_id"],
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        credit_omr=row["credit_baisa"] // BAISA,
        credit_baisa=row["credit_baisa"],
        max_redemptions=row["max_redemptions"],
        budget_omr=None if budget is None else budget // BAISA,
        budget_baisa=budget,
        code_max_redemptions=row["code_max_redemptions"],
        active=row["active"],
        revoked=row["revoked"],
        codes_issued=row["codes_issued"],
        redemptions=row["times_redeemed"],
        credit_granted_omr=row["granted_baisa"] // BAISA,
        credit_granted_baisa=row["granted_baisa"],
        budget_left_baisa=left,
        accepting_redemptions=bool(live and not capped and window is None),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        starts_at=starts_at,
        expires_at=expires_at,
        plans=plans,
        min_order_omr=row["min_order_baisa"] // BAISA,
        new_organizations_only=row["new_organizations_only"],
        credit_valid_for=format_duration(valid_for) if valid_for else None,
        **{k: v for k, v in discount_fields(row).items() if k != "kind"},
        **extra,
    )


def _view_row(reply: Accepted) -> dict[str, Any]:
    """The campaign as the command left it (its receipt), in the read model's columns."""
    if reply.campaign is None:
        raise RuntimeError("the processor accepted a campaign command without the campaign")
    return reply.campaign.model_dump()


# ----------------------------------------------------------------------------------- handlers


async def create_campaign(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    limit = request.app[SETTINGS].max_credit_baisa // BAISA
    body = await parse_body(request, CreateCampaignBody, {"max_credit_omr": limit})
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        try:
            validate_command_id(key)
        except InvalidInput as exc:
            raise ApiError(400, f"Idempotency-Key: {exc.message}") from exc
    for _ in range(_CREATE_ATTEMPTS):
        # With a key, the id is drawn from it: a retry names the same campaign (and replays).
        campaign_id = new_campaign_id(_seeded(key) if key is not None else os.urandom)
        command = CreateCampaign(
            campaign_id=campaign_id,
            name=body.name,
            description=body.description,
            kind=body.kind,
            discount=body.discount_terms(),
            credit_baisa=(body.credit_omr or 0) * BAISA,
            max_redemptions=body.max_redemptions,
            budget_baisa=body.budget_omr * BAISA if body.budget_omr is not None else None,
            code_max_redemptions=body.code_max_redemptions,
            active=body.active,
            starts_at=body.starts_at,
            expires_at=body.expires_at,
            plans=body.plans,
            min_order_baisa=body.min_order_omr * BAISA,
            new_organizations_only=body.new_organizations_only,
            credit_valid_for_seconds=body.credit_valid_for_seconds,
        )
        reply = await send(request, command, principal)
        if isinstance(reply, Accepted):
            return ok(campaign_out(_view_row(reply)))
        if reply.reason != "already_exists" or key is not None:
            _raise_rejected(reply)
    raise ApiError(503, "no free campaign id was found; retry")


async def list_campaigns(request: web.Request) -> web.Response:
    await require_issuer(request)
    limit = int_query(request, "limit", 100, 1, 1000)
    offset = int_query(request, "offset", 0, 0, MAX_OFFSET)
    rows, total = await campaign_queries.list_campaigns(
        request.app[POOL], limit=limit, offset=offset
    )
    headers = page_headers(request, total=total, offset=offset, shown=len(rows))
    return ok([campaign_out(r) for r in rows], headers=headers)


async def _campaign_row(request: web.Request) -> tuple[str, dict[str, Any]]:
    await require_issuer(request)
    campaign_id = path_campaign(request)
    row = await campaign_queries.get_campaign(request.app[POOL], campaign_id)
    if row is None:
        raise ApiError(404, "campaign not found")
    return campaign_id, row


async def get_campaign(request: web.Request) -> web.Response:
    campaign_id, row = await _campaign_row(request)
    points: list[TimelinePoint] = []
    redemptions = granted = 0
    for hour in await campaign_queries.timeline(request.app[POOL], campaign_id):
        redemptions += hour["redemptions"]
        granted += hour["credit_baisa"]
        points.append(
            TimelinePoint(at=hour["at"], redemptions=redemptions, credit_granted_baisa=granted)
        )
    return ok(campaign_out(row, CampaignDetail, timeline=points))


async def generate_codes(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    campaign_id = path_campaign(request)
    body = await parse_body(request, GenerateCodesBody)
    try:
        command = GenerateCampaignCodes(
            campaign_id=campaign_id, count=body.count, prefix=body.prefix
        )
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc
    reply = await send(request, command, principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    generated = _view_row(reply)["generated"] or 0
    codes = await campaign_queries.batch_codes(request.app[POOL], campaign_id, reply.command_id)
    if len(codes) != generated:
        # The read models have not applied the whole generation in time: it is stored.
        raise ApiError(
            503,
            "the codes are generated but not readable yet; retry with the same Idempotency-Key",
            {"Retry-After": "1"},
        )
    return ok(CodesOut(count=len(codes), codes=codes))


async def revoke_campaign(request: web.Request) -> web.Response:
    principal = await require_issuer(request)
    campaign_id = path_campaign(request)
    reply = await send(request, RevokeCampaign(campaign_id=campaign_id), principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    return ok(OkOut())


def code_status(row: Any, code_cap: int, revoked: bool) -> str:
    """``revoked`` (its campaign is), ``redeemed`` (no redemption left on the code: at its
    cap), ``partly_redeemed`` (some, more allowed), ``available`` (none yet)."""
    if revoked:
        return "revoked"
    taken = row["redemptions"]
    if code_cap and taken >= code_cap:
        return "redeemed"
    return "partly_redeemed" if taken else "available"


async def codes_csv(request: web.Request) -> web.StreamResponse:
    campaign_id, campaign = await _campaign_row(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="campaign-{campaign_id}-codes.csv"',
        }
    )
    chunks = campaign_queries.codes_with_state(request.app[POOL], campaign_id)
    first = await anext(chunks, None)  # a read failure is still a 503, before the 200
    await response.prepare(request)
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(CSV_HEADER)
    cap, revoked = campaign["code_max_redemptions"], campaign["revoked"]
    rows = first
    while rows is not None:
        for r in rows:
            at = r["last_at"]
            out.writerow(
                (
                    r["code"],
                    code_status(r, cap, revoked),
                    r["customers"] or "",
                    at.isoformat().replace("+00:00", "Z") if at is not None else "",
                )
            )
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        rows = await anext(chunks, None)
    if buffer.tell():
        await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response
