"""/openapi.json, generated from the same pydantic models the handlers validate with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from voucher_ledger import __version__
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
MAX_AFTER_SEQ = 2**62
MAX_OFFSET = 10_000_000


def build_openapi(max_credit_omr: int | None = None) -> dict[str, Any]:
    """The document; ``max_credit_omr`` (from MAX_CREDIT_BAISA) bounds ``credit_omr``."""
    defs: dict[str, Any] = {}
    error = {"description": "error", "content": _json(_schema(m.ErrorOut, defs))}
    issuer: list[dict[str, list[str]]] = [{"bearer": []}]
    code_schema = {"type": "string", "pattern": CODE_INPUT_PATTERN}
    code_help = "a voucher code; surrounding whitespace is stripped and it is upper-cased"
    code_param: dict[str, Any] = {
        "name": "code",
        "in": "path",
        "required": True,
        "description": code_help,
        "schema": code_schema,
    }
    detail_code = {
        **code_param,
        "description": code_param["description"]
        + "; the lower-case segments "
        + ", ".join(RESERVED_SEGMENTS)
        + " name routes (405 with GET), their upper-case codes do not",
        "schema": {**code_param["schema"], "not": {"enum": list(RESERVED_SEGMENTS)}},
    }
    page = [
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
    ]
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": COMMAND_ID_PATTERN.pattern},
    }
    offset = {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
    }

    def resp(model: type[BaseModel], *codes: int, many: bool = False) -> dict[str, Any]:
        ref = _schema(model, defs)
        schema = {"type": "array", "items": ref} if many else ref
        out: dict[str, Any] = {"200": {"description": "ok", "content": _json(schema)}}
        for code in codes:
            out[str(code)] = error
        return out

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": _json(_schema(model, defs))}

    issue = {
        "summary": "Issue, update or restore a voucher",
        "security": issuer,
        "parameters": [idem],
        "requestBody": body(m.IssueVoucherBody),
        "responses": resp(m.VoucherOut, 400, 401, 403, 409, 413, 415, 503),
    }
    if max_credit_omr is not None:
        credit = defs["IssueVoucherBody"]["properties"]["credit_omr"]
        credit["maximum"] = max_credit_omr
    listing = {
        "summary": "Live (or revoked) vouchers, newest first",
        "security": issuer,
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
            offset,
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
        ],
        "responses": resp(m.VoucherOut, 400, 401, 403, 503, many=True),
    }
    revoke = {
        "summary": "Revoke (soft delete) a voucher",
        "security": issuer,
        "parameters": [code_param, idem],
        "responses": resp(m.OkOut, 400, 401, 403, 404, 409, 503),
    }
    preview_responses = resp(m.PreviewOut, 400, 404, 413, 415, 429, 503)
    preview_responses["410"] = {
        "description": "inactive or at its cap",
        "content": _json(_schema(m.PreviewOut, defs)),
    }
    paths: dict[str, Any] = {
        "/billing/vouchers/issue": {"post": issue},
        "/billing/admin/promos": {"get": listing, "post": issue},
        "/billing/vouchers/list": {"get": listing},
        "/billing/vouchers/revoke/{code}": {"delete": revoke},
        "/billing/admin/promos/{code}": {"delete": revoke},
        "/billing/vouchers/redeem-preview": {
            "post": {
                "summary": "Public preview of a code (rate-limited per client)",
                "security": [],
                "requestBody": body(m.PreviewBody),
                "responses": preview_responses,
            }
        },
        "/billing/vouchers/{code}": {
            "get": {
                "summary": "A voucher's full state with counters (now, or ?at= a past time)",
                "security": issuer,
                "parameters": [
                    detail_code,
                    {
                        "name": "at",
                        "in": "query",
                        "required": False,
                        "description": "the state as of this time, folded from the event "
                        "stream (events with occurred_at <= at); 404 if the voucher did not "
                        "exist yet. ISO 8601 with a time zone; encode '+' as %2B or use Z.",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                "responses": resp(m.VoucherDetail, 400, 401, 403, 404, 405, 503),
            }
        },
        "/billing/vouchers/{code}/history": {
            "get": {
                "summary": "The voucher's audit trail in stream order",
                "security": issuer,
                "parameters": [code_param, *page],
                "responses": resp(m.HistoryOut, 400, 401, 403, 404, 503),
            }
        },
        "/billing/vouchers/{code}/redemptions": {
            "get": {
                "summary": "The voucher's redemptions in stream order",
                "security": issuer,
                "parameters": [code_param, *page],
                "responses": resp(m.RedemptionsOut, 400, 401, 403, 404, 503),
            }
        },
        "/billing/balance": {
            "get": {
                "summary": "The caller's credit: available, reserved, and the 20 newest movements",
                "security": issuer,
                "responses": resp(m.BalanceOut, 401, 503),
            }
        },
        "/billing/admin/orders": {
            "get": {
                "summary": "Newest orders with their status",
                "security": issuer,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    offset,
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(ORDER_STATUSES)},
                    },
                ],
                "responses": resp(m.OrderOut, 400, 401, 403, 503, many=True),
            }
        },
        "/billing/webhook": {
            "post": {
                "summary": "Stripe webhook (authenticated by the Stripe-Signature header)",
                "security": [],
                "parameters": [
                    {
                        "name": "Stripe-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": _json({"type": "object", "description": "a Stripe event"}),
                },
                "responses": resp(m.WebhookOut, 400, 413, 503),
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness", "security": [], "responses": resp(m.HealthOut)}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: NATS, Postgres, projection lag",
                "security": [],
                "responses": {**resp(m.ReadyOut), "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "text/plain exposition"}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
    }
    checkout = {
        "summary": "Check out a plan with addons and an optional promo code; credit first",
        "security": issuer,
        "parameters": [idem],
        "requestBody": body(m.CheckoutBody),
        "responses": resp(m.CheckoutOut, 400, 401, 409, 413, 415, 502, 503),
    }
    for path in (
        "/billing/checkout",
        "/billing/purchase",
        "/api/v1/billing/purchase",
        "/api/v1/sme/billing/purchase",
    ):
        paths[path] = {"post": checkout}
    return {
        "openapi": "3.1.0",
        "info": {"title": "voucher-ledger", "version": __version__},
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
