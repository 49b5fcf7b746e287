"""Hooks for the schemathesis run of tests/e2e/test_openapi_schemathesis.py (loaded by the
``hooks`` key of tests/e2e/schemathesis.toml)."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

from voucher_ledger.http.openapi import RESERVED_SEGMENTS


def _has_whole_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_whole_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_whole_float(v) for v in value)
    return False


def _window_backwards(body: Any) -> bool:
    """A voucher whose ``expires_at`` is not after its ``starts_at`` (a relation between two
    fields that no JSON Schema keyword states), or whose timestamps Python's datetime cannot
    hold (years beyond 1-9999 with their offsets): a 400 by design (issue #20)."""
    if not isinstance(body, dict):
        return False
    from datetime import datetime

    times = []
    for name in ("starts_at", "expires_at"):
        value = body.get(name)
        if isinstance(value, str):
            try:
                times.append(datetime.fromisoformat(value.replace("z", "Z")))
            except ValueError:
                return True
    return len(times) == 2 and times[1] <= times[0]


def _duration_out_of_range(body: Any) -> bool:
    """A ``credit_valid_for`` of the right form but zero or over 100 years (issue #20)."""
    if not isinstance(body, dict) or not isinstance(body.get("credit_valid_for"), str):
        return False
    from voucher_ledger.ledger.commands import MAX_VALID_FOR_SECONDS
    from voucher_ledger.ledger.durations import parse_duration

    try:
        seconds = parse_duration(body["credit_valid_for"])
    except ValueError:
        return False
    return not 0 < seconds <= MAX_VALID_FOR_SECONDS


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Every failure counts, except three that no schema keyword can rule out:

    * JSON Schema calls 10.0 an integer; the API refuses it on purpose (money is never written
      as a float: tests/e2e/test_api.py "credit-whole-float"), so a rejected "positive" body
      holding such a number is not a failure;
    * a voucher window that ends before it starts (``_window_backwards``), a credit lifetime
      of zero or over 100 years (``_duration_out_of_range``);
    * ``/billing/vouchers/list`` (and ``issue``, ``redeem-preview``, ``revoke``) are other
      routes, not the voucher ``{code}`` (the document says so with ``not: {enum: [...]}``): a
      request there was answered by another operation, which has its own cases.
    """
    if (
        isinstance(failure, RejectedPositiveData)
        and response.status_code == 400
        and (
            _has_whole_float(case.body)
            or _window_backwards(case.body)
            or _duration_out_of_range(case.body)
        )
    ):
        return False
    code = (case.path_parameters or {}).get("code")
    return not (case.operation.path == "/billing/vouchers/{code}" and code in RESERVED_SEGMENTS)
