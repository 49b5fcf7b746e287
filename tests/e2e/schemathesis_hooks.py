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


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Every failure counts, except two that no schema keyword can rule out:

    * JSON Schema calls 10.0 an integer; the API refuses it on purpose (money is never written
      as a float: tests/e2e/test_api.py "credit-whole-float"), so a rejected "positive" body
      holding such a number is not a failure;
    * ``/billing/vouchers/list`` (and ``issue``, ``redeem-preview``, ``revoke``) are other
      routes, not the voucher ``{code}`` (the document says so with ``not: {enum: [...]}``): a
      request there was answered by another operation, which has its own cases.
    """
    if (
        isinstance(failure, RejectedPositiveData)
        and response.status_code == 400
        and _has_whole_float(case.body)
    ):
        return False
    code = (case.path_parameters or {}).get("code")
    return not (case.operation.path == "/billing/vouchers/{code}" and code in RESERVED_SEGMENTS)
