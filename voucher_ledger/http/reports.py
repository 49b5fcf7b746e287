"""``GET /billing/reports/campaigns?from=&to=`` (issue #21, deliverable 4; issuers): per
campaign, the single vouchers and the orders without a code, what they cost and brought in
over the window ``[from, to)``, and the same totals for this Sovereign (``SOVEREIGN_FQDN``, a
column, so a hub can sum Sovereigns). JSON, or CSV with ``Accept: text/csv``. From the
``reports`` read model (``projections/reports.py`` says what each figure counts)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from voucher_ledger.http.auth import ISSUER_ROLES
from voucher_ledger.http.errors import ApiError, ok
from voucher_ledger.http.keys import POOL, SETTINGS
from voucher_ledger.http.vouchers import ISSUER_FORBIDDEN, authenticate
from voucher_ledger.ledger.money import whole_omr
from voucher_ledger.projections import report_queries
from voucher_ledger.projections.reports import FIGURES
from voucher_ledger.projections.timetravel import BadTimestamp, parse_timestamp

MONEY = ("credit_granted", "credit_spent", "credit_expired", "discount", "revenue")
_COLUMN = {  # the API's name -> the read model's figure
    "credit_granted": "granted_baisa",
    "credit_spent": "spent_baisa",
    "credit_expired": "expired_baisa",
    "discount": "discount_baisa",
    "revenue": "revenue_baisa",
}
CSV_HEADER = (
    "sovereign",
    "scope",
    "campaign_id",
    "name",
    "codes_issued",
    "redemptions",
    *(f"{m}_{unit}" for m in MONEY for unit in ("omr", "baisa")),
    "orders",
)


class ReportRow(BaseModel):
    sovereign: str = Field(description="SOVEREIGN_FQDN of the service that reports")
    scope: str = Field(
        description="campaign (one of its campaigns), vouchers (the single vouchers: codes of "
        "no campaign), none (orders without a code), or sovereign (the totals)"
    )
    campaign_id: str | None
    name: str
    codes_issued: int
    redemptions: int = Field(description="redemptions less reversals in the window")
    credit_granted_omr: int
    credit_granted_baisa: int
    credit_spent_omr: int
    credit_spent_baisa: int
    credit_expired_omr: int
    credit_expired_baisa: int
    discount_omr: int
    discount_baisa: int
    orders: int = Field(description="orders completed in the window")
    revenue_omr: int
    revenue_baisa: int = Field(
        description="what Stripe was paid for those orders (after credit and discount)"
    )


class ReportOut(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    sovereign: str
    from_: datetime | None = Field(alias="from", description="the window's start (inclusive)")
    to: datetime | None = Field(description="the window's end (exclusive)")
    rows: list[ReportRow]
    totals: ReportRow = Field(description="the Sovereign's totals (the sum of the rows)")


def _window(request: web.Request, name: str) -> datetime | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    if len(values) != 1:
        raise ApiError(400, f"{name} must be given once")
    try:
        return parse_timestamp(values[0], name=name)
    except BadTimestamp as exc:
        raise ApiError(400, str(exc)) from exc
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+14:00, before the year 1 in UTC
        raise ApiError(400, f"{name} is out of range (years 1 to 9999 in UTC)") from exc


def _row(sovereign: str, figures: dict[str, Any]) -> ReportRow:
    money: dict[str, int] = {}
    for name, column in _COLUMN.items():
        baisa = int(figures[column])
        money[f"{name}_omr"], money[f"{name}_baisa"] = whole_omr(baisa), baisa
    return ReportRow(
        sovereign=sovereign,
        scope=figures["scope"],
        campaign_id=figures["campaign_id"],
        name=figures["name"],
        codes_issued=int(figures["codes_issued"]),
        redemptions=int(figures["redemptions"]),
        orders=int(figures["orders"]),
        **money,
    )


async def campaign_report(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    if not principal.has_any(ISSUER_ROLES):
        raise ApiError(403, ISSUER_FORBIDDEN)
    unknown = sorted(set(request.query) - {"from", "to"})
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r} (from and to are known)")
    since, until = _window(request, "from"), _window(request, "to")
    sovereign = request.app[SETTINGS].sovereign_fqdn
    lines = await report_queries.campaign_report(request.app[POOL], since, until)
    rows = [_row(sovereign, line) for line in lines]
    totals: dict[str, Any] = {"scope": "sovereign", "campaign_id": None, "name": sovereign}
    for figure in FIGURES:
        totals[figure] = sum(int(line[figure]) for line in lines)
    total = _row(sovereign, totals)
    if "text/csv" in request.headers.get("Accept", ""):
        return _csv([*rows, total])
    return ok(
        ReportOut.model_validate(
            {"sovereign": sovereign, "from": since, "to": until, "rows": rows, "totals": total}
        )
    )


def _csv(rows: list[ReportRow]) -> web.Response:
    return csv_response(rows, CSV_HEADER, "campaign-report.csv")


def csv_response(rows: Sequence[BaseModel], header: Sequence[str], filename: str) -> web.Response:
    """A report's rows as a CSV download: ``header``'s columns of each row, empty for a null,
    a text that a spreadsheet would run as a formula quoted (the campaign and Sovereign
    reports)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        doc = row.model_dump()
        writer.writerow(["" if doc[c] is None else _safe(doc[c]) for c in header])
    return web.Response(
        body=out.getvalue().encode(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @) is quoted with '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
