"""Global vouchers at the hub (issue #22): issue, revoke, recall a Sovereign's share, and the
list and detail read from the hub's read model. Issuers only, and only on the hub's serve
(``HUB=true``): elsewhere every one of them is a 404.

Writes go through the command bus to the code's processor (``ledger/global_voucher.py``) and
answer once the read models have applied them (``vouchers.send``)."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web
from pydantic import ValidationError

from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.http.errors import ApiError, describe_validation, int_query, ok, parse_body
from voucher_ledger.http.global_models import (
    GlobalOut,
    GlobalShareOut,
    IssueGlobalBody,
    RecallBody,
)
from voucher_ledger.http.keys import POOL, SETTINGS
from voucher_ledger.http.models import OkOut
from voucher_ledger.http.openapi import MAX_OFFSET
from voucher_ledger.http.paging import page_headers
from voucher_ledger.http.vouchers import (
    discount_fields,
    path_code,
    require_issuer,
    send,
    stored_moment,
)
from voucher_ledger.ledger.commands import IssueGlobal, IssueVoucher, RecallShare, RevokeGlobal
from voucher_ledger.ledger.durations import format_duration
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.projections import global_queries

NOT_HUB = "global vouchers are issued at the hub (HUB=true); this serve is not the hub"


def require_hub(request: web.Request) -> None:
    if not request.app[SETTINGS].hub:
        raise ApiError(404, NOT_HUB)


def _raise_rejected(reply: Rejected) -> NoReturn:
    status = {
        "not_found": 404,
        "invalid_input": 400,
        "already_exists": 409,
        "inactive": 409,
        "command_id_reused": 409,
    }.get(reply.reason, 409)
    message = "global voucher not found" if reply.reason == "not_found" else reply.message
    if reply.reason == "inactive":
        message = "the global voucher is revoked"
    raise ApiError(status, message)


def _json_list(value: object) -> list[str] | None:
    if value is None or isinstance(value, list):
        return value
    return [str(v) for v in json.loads(str(value))]


def global_out(row: dict[str, Any], shares: list[dict[str, Any]]) -> GlobalOut:
    """A global voucher from its fields (the read model's row, or the processor's view
    dumped) and its Sovereigns' rows."""
    valid_for = row["credit_valid_for_seconds"]
    return GlobalOut(
        **discount_fields(row),
        code=row["code"],
        credit_omr=row["credit_baisa"] // BAISA,
        credit_baisa=row["credit_baisa"],
        description=row["description"],
        max_redemptions=row["max_redemptions"],
        redeemed=sum(s["redeemed"] for s in shares),
        revoked=row["revoked"],
        pool=row["pool"],
        share=row["share"],
        starts_at=stored_moment(row["starts_at"]),
        expires_at=stored_moment(row["expires_at"]),
        plans=_json_list(row["plans"]),
        min_order_omr=row["min_order_baisa"] // BAISA,
        min_order_baisa=row["min_order_baisa"],
        new_organizations_only=row["new_organizations_only"],
        credit_valid_for=format_duration(valid_for) if valid_for else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_seq=row["last_seq"],
        sovereigns=[
            GlobalShareOut(
                sovereign=s["sovereign"],
                allotted=s["allotted"],
                released=s["released"],
                redeemed=s["redeemed"],
                unused=s["allotted"] - s["released"] - s["redeemed"],
                requested=s["requested"],
                trail_seq=s["trail_seq"],
            )
            for s in sorted(shares, key=lambda s: str(s["sovereign"]))
        ],
    )


def _reply_out(reply: Accepted) -> GlobalOut:
    if reply.global_voucher is None:
        raise RuntimeError("the processor accepted a global voucher command without it")
    view = reply.global_voucher.model_dump()
    return global_out(view, view["sovereigns"])


def _sovereigns(request: web.Request, body: IssueGlobalBody) -> list[str]:
    """The body's Sovereigns (else the hub's SOVEREIGNS); with SOVEREIGNS set, only those:
    a share given to a Sovereign whose events the hub's trail does not source would never be
    seen used nor come back."""
    known = request.app[SETTINGS].sovereign_names
    names = body.sovereigns if body.sovereigns is not None else known
    unknown = [n for n in names if known and n not in known]
    if unknown:
        raise ApiError(
            400,
            f"sovereigns: {', '.join(unknown)} not in this hub's SOVEREIGNS ({', '.join(known)})",
            fields={"sovereigns": "names a Sovereign this hub does not source"},
        )
    return list(names)


# ----------------------------------------------------------------------------------- handlers


async def issue_global(request: web.Request) -> web.Response:
    require_hub(request)
    principal = await require_issuer(request)
    limit = request.app[SETTINGS].max_credit_baisa // BAISA
    body = await parse_body(request, IssueGlobalBody, {"max_credit_omr": limit})
    sovereigns = _sovereigns(request, body)
    try:
        terms = IssueVoucher(**body.terms())
        command = IssueGlobal(code=body.code, terms=terms, sovereigns=sovereigns)
    except InvalidInput as exc:
        raise ApiError(400, exc.message) from exc
    except ValidationError as exc:
        message, fields = describe_validation(exc)
        raise ApiError(400, message, fields=fields) from exc
    reply = await send(request, command, principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    return ok(_reply_out(reply), status=201)


async def revoke_global(request: web.Request) -> web.Response:
    require_hub(request)
    principal = await require_issuer(request)
    code = path_code(request)
    reply = await send(request, RevokeGlobal(code=code), principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    return ok(OkOut())


async def recall_share(request: web.Request) -> web.Response:
    require_hub(request)
    principal = await require_issuer(request)
    code = path_code(request)
    body = await parse_body(request, RecallBody)
    command = RecallShare(code=code, sovereign=body.sovereign, slots=body.slots)
    reply = await send(request, command, principal)
    if isinstance(reply, Rejected):
        _raise_rejected(reply)
    return ok(_reply_out(reply))


async def list_globals(request: web.Request) -> web.Response:
    require_hub(request)
    await require_issuer(request)
    limit = int_query(request, "limit", 100, 1, 1000)
    offset = int_query(request, "offset", 0, 0, MAX_OFFSET)
    found, total = await global_queries.list_globals(request.app[POOL], limit=limit, offset=offset)
    headers = page_headers(request, total=total, offset=offset, shown=len(found))
    return ok([global_out(row, shares) for row, shares in found], headers=headers)


async def get_global(request: web.Request) -> web.Response:
    require_hub(request)
    await require_issuer(request)
    code = path_code(request)
    found = await global_queries.get_global(request.app[POOL], code)
    if found is None:
        raise ApiError(404, "global voucher not found")
    return ok(global_out(*found))
