"""One way to fail: raise ApiError; the middleware answers ``{"error": ...}`` with its status."""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from voucher_ledger.ledger.errors import DomainError

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """``fields``: a request body's errors, field name -> what is wrong with it in plain words
    (answered beside ``error`` as ``fields``)."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.fields = fields


def _plain(err: Any, known: list[str]) -> str:
    """One pydantic error in plain words, without the field's name."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(err["loc"][-1]) if err["loc"] else ""
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"is not a field of this request{hint}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    words = {
        "missing": "is required",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "string_type": "must be text",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "greater_than": "must be more than {gt}",
        "greater_than_equal": "must be {ge} or more",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be {le} or less",
        "string_too_short": "must be at least {min_length} characters",
        "string_too_long": "must be at most {max_length} characters",
        "too_long": "must have at most {max_length} items",
        "string_pattern_mismatch": "contains a character that is not allowed",
    }
    if kind in words:
        return words[kind].format(**ctx)
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])  # our validators' own words
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


def describe_validation(
    exc: ValidationError, model: type[BaseModel] | None = None
) -> tuple[str, dict[str, str]]:
    """Every error of a body, each naming its field: the one-line message and field -> words."""
    known = sorted(model.model_fields) if model is not None else []
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        words = _plain(err, known)
        fields[where] = f"{fields[where]}; {words}" if where in fields else words
    return "; ".join(f"{where} {words}" for where, words in fields.items()), fields


class _NotStrictJson(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        # Two parsers may disagree on which value wins (a proxy that checks the first, an app
        # that uses the last); a body that says two things is refused.
        raise _NotStrictJson("duplicate key")
    return doc


def _no_constant(name: str) -> Any:
    raise _NotStrictJson(f"{name} is not JSON")  # NaN, Infinity, -Infinity


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 would be an infinity in disguise
        raise _NotStrictJson("number out of range")
    return value


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def parse_body(
    request: web.Request, model: type[M], context: dict[str, Any] | None = None
) -> M:
    """Read a strict JSON object body into ``model`` or raise a 4xx with a clear message (every
    field error at once, in ``fields`` too); ``context`` goes to the model's validators."""
    if not is_json(request.content_type):
        raise ApiError(415, "Content-Type must be application/json")
    raw = await request.read()  # 413 above the body limit
    if not raw.strip():
        raise ApiError(400, "invalid JSON body: empty")
    try:
        # UTF-8 only (RFC 8259): json.loads would also guess UTF-16 and UTF-32 from bytes.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid JSON body: not UTF-8") from exc
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except _NotStrictJson as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid JSON body") from exc
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid JSON body: expected an object")
    try:
        return model.model_validate(doc, context=context)
    except ValidationError as exc:
        message, fields = describe_validation(exc, model)
        raise ApiError(400, message, fields=fields) from exc
    except DomainError as exc:
        raise ApiError(400, exc.message) from exc


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # The length bound keeps int() cheap; 2**62, the largest bound used, has 19 digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 32:
        raise ApiError(400, f"{name} must be an integer between {low} and {high}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer between {low} and {high}")
    return value


def error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    fields: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    return web.json_response(body, status=status, headers=headers)


def ok(
    model: BaseModel | list[BaseModel],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    if isinstance(model, list):
        body = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        body = model.model_dump_json()
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)


def route_name(request: web.Request) -> str:
    """The matched route's template (``/billing/vouchers/{code}``): a bounded label."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"
