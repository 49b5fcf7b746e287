"""One way to fail: raise ApiError; the middleware answers ``{"error": ...}`` with its status."""

from __future__ import annotations

import json
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from voucher_ledger.ledger.errors import DomainError

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts[:5])


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read a JSON object body into ``model`` or raise a 400 with a clear message."""
    raw = await request.read()  # 413 above the body limit
    if not raw.strip():
        raise ApiError(400, "invalid JSON body: empty")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid JSON body") from exc
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid JSON body: expected an object")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ApiError(400, describe_validation(exc)) from exc
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
