"""The route declaration (``Route``) and the OpenAPI document built from a table of them.

``http/routes.py`` holds the table; the router and ``/openapi.json`` are both built from it, so
a route cannot be served without being documented, nor documented without being served. The
schemas come from the same pydantic models the handlers validate with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from voucher_ledger.http import models as m
from voucher_ledger.ledger.codes import CODE_INPUT_PATTERN, COMMAND_ID_PATTERN, SEARCH_INPUT_PATTERN

_REF = "#/components/schemas/"


def _schema(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF + "{model}")
    for name, sub in schema.pop("$defs", {}).items():
        defs[name] = sub
    defs[model.__name__] = schema
    return {"$ref": _REF + model.__name__}


# Path segments under /billing/vouchers/ that name a route, not a voucher (405 with GET).
RESERVED_SEGMENTS = ("issue", "list", "redeem-preview", "revoke")
ORDER_STATUSES = ("abandoned", "awaiting_payment", "completed", "failed", "opened", "refund_due")
# The admin orders list's ?status= filter: the states, and the seed's `pending` (an order waiting
# for Stripe, the state awaiting_payment), which its Orders page filters by.
ORDER_STATUS_FILTERS = (*ORDER_STATUSES, "pending")
MAX_AFTER_SEQ = 2**62
MAX_OFFSET = 10_000_000


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# public: no token; issuer: a superadmin / sovereign-admin token; superadmin: a superadmin
# token; customer: any signed-in user (the token's sub is the wallet); webhook: no token,
# Stripe's signature header instead.
Auth = Literal["public", "issuer", "superadmin", "customer", "webhook"]
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

CODE_HELP = "a voucher code; surrounding whitespace is stripped and it is upper-cased"
CODE: dict[str, Any] = {
    "name": "code",
    "in": "path",
    "required": True,
    "description": CODE_HELP,
    "schema": {"type": "string", "pattern": CODE_INPUT_PATTERN},
}
# GET /billing/vouchers/{code}: the segments that name routes are not codes.
DETAIL_CODE: dict[str, Any] = {
    **CODE,
    "description": CODE_HELP
    + "; the lower-case segments "
    + ", ".join(RESERVED_SEGMENTS)
    + " name routes (405 with GET), their upper-case codes do not",
    "schema": {**CODE["schema"], "not": {"enum": list(RESERVED_SEGMENTS)}},
}
AT: dict[str, Any] = {
    "name": "at",
    "in": "query",
    "required": False,
    "description": "the state as of this time, folded from the event "
    "stream (events with occurred_at <= at); 404 if the voucher did not "
    "exist yet. ISO 8601 with a time zone; encode '+' as %2B or use Z.",
    "schema": {"type": "string", "format": "date-time"},
}
TENANT_QUERY: dict[str, Any] = {
    "name": "tenant_id",
    "in": "query",
    "required": False,
    "description": "the Organization whose account to read (a member's, or any for an issuer); "
    "without it: the caller's only Organization (an empty balance when none, a 400 when "
    "several)",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": "^[^\\x00-\\x1f\\x7f]*$",
    },
}
PAGE: tuple[dict[str, Any], ...] = (
    {
        "name": "after_seq",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_AFTER_SEQ},
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
)
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": COMMAND_ID_PATTERN.pattern},
}
OFFSET: dict[str, Any] = {
    "name": "offset",
    "in": "query",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
}
LIST_QUERY: tuple[dict[str, Any], ...] = (
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    OFFSET,
    {
        "name": "q",
        "in": "query",
        "description": "part of a code (case-insensitive)",
        "schema": {"type": "string", "pattern": SEARCH_INPUT_PATTERN},
    },
    {
        "name": "status",
        "in": "query",
        "description": "live (the default: not revoked) or revoked",
        "schema": {"type": "string", "enum": ["live", "revoked"], "default": "live"},
    },
)
ORDERS_QUERY: tuple[dict[str, Any], ...] = (
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
    },
    OFFSET,
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string", "enum": list(ORDER_STATUS_FILTERS)},
    },
)
TENANT_PATH: dict[str, Any] = {
    "name": "tenant_id",
    "in": "path",
    "required": True,
    "description": "the Organization (the checkout's tenant_id)",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": "^[^\\x00-\\x1f\\x7f]+$",
    },
}
STRIPE_SIGNATURE: dict[str, Any] = {
    "name": "Stripe-Signature",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
}


@dataclass(frozen=True)
class Route:
    """One operation: how it is routed and how it is documented.

    ``response`` is the success body's model (answered with ``status``: 200, 201 for a create;
    a JSON array of them with ``many``; ``None``: not JSON, described by ``ok``); ``errors``
    the statuses answered with ``{"error": ...}``; ``same_body`` other statuses answered with
    the success body, ``described`` statuses answered with a body the document does not model.
    ``body`` is the request body's model, or ``raw_body`` its schema when the handler does not
    parse it with a model. ``headers``: the success answer's response headers (name -> OpenAPI
    header object)."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    handler: Handler
    auth: Auth
    summary: str
    response: type[BaseModel] | None = None
    many: bool = False
    ok: str = "ok"
    errors: tuple[int, ...] = ()
    same_body: tuple[tuple[int, str], ...] = ()
    described: tuple[tuple[int, str], ...] = ()
    body: type[BaseModel] | None = None
    raw_body: dict[str, Any] | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    headers: dict[str, Any] | None = None
    status: int = 200  # the success status (201: a create)
    csv: bool = False  # the success answer may be text/csv too (a report asked for CSV)


def build_document(
    routes: Iterable[Route], version: str, max_credit_omr: int | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; ``max_credit_omr`` (from MAX_CREDIT_BAISA)
    bounds ``credit_omr``."""
    defs: dict[str, Any] = {}
    error = {"description": "error", "content": _json(_schema(m.ErrorOut, defs))}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "security": BEARER if route.auth in ("issuer", "superadmin", "customer") else [],
        }
        if route.parameters:
            op["parameters"] = list(route.parameters)
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": _json(_schema(route.body, defs))}
        elif route.raw_body is not None:
            op["requestBody"] = {"required": True, "content": _json(route.raw_body)}
        responses: dict[str, Any] = {}
        success = str(route.status)
        if route.response is None:
            responses[success] = {"description": route.ok}
        else:
            ref = _schema(route.response, defs)
            schema = {"type": "array", "items": ref} if route.many else ref
            responses[success] = {"description": route.ok, "content": _json(schema)}
            if route.csv:
                responses[success]["content"]["text/csv"] = {"schema": {"type": "string"}}
        if route.headers:
            responses[success]["headers"] = route.headers
        for status, description in route.same_body:
            responses[str(status)] = {"description": description, "content": _json(ref)}
        for status in route.errors:
            responses[str(status)] = error
        for status, description in route.described:
            responses[str(status)] = {"description": description}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op
    for body in ("IssueVoucherBody", "CreateCampaignBody", "IssueGlobalBody"):
        if max_credit_omr is not None and body in defs:
            defs[body]["properties"]["credit_omr"]["maximum"] = max_credit_omr
    return {
        "openapi": "3.1.0",
        "info": {"title": "voucher-ledger", "version": version},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}
