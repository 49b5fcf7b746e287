"""``GET /billing/reports/sovereigns`` (issue #22; issuers; the hub only): per Sovereign and
code, the redemptions standing, the redemptions reversed and the credit the standing ones
granted, then each Sovereign's totals. From the hub's read model of its Sovereigns' trail
(``projections/sovereign_trail.py``). JSON, or CSV with ``?format=csv`` (or
``Accept: text/csv``). ``?code=`` (repeatable, normalised like every code) keeps those codes;
``?global=true`` only the global vouchers (by the hub's ``global_vouchers`` read model)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from voucher_ledger.http.auth import ISSUER_ROLES
from voucher_ledger.http.errors import ApiError, ok
from voucher_ledger.http.keys import POOL, SETTINGS
from voucher_ledger.http.reports import csv_response
from voucher_ledger.http.vouchers import ISSUER_FORBIDDEN, authenticate
from voucher_ledger.ledger.codes import normalise_code
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.money import whole_omr
from voucher_ledger.projections import sovereign_trail
from voucher_ledger.projections.trail_fold import ReportLine, report_lines

NOT_HUB = "this serve is not the hub (HUB=true): it keeps no Sovereign's trail"
CSV_HEADER = (
    "sovereign",
    "scope",
    "code",
    "redemptions",
    "reversed",
    "credit_granted_omr",
    "credit_granted_baisa",
)
_KNOWN = ("code", "global", "format")
MAX_CODES = 1000


class SovereignLine(BaseModel):
    sovereign: str = Field(description="the Sovereign's name (its SOVEREIGN_NAME)")
    scope: str = Field(description="code (one code's figures) or sovereign (its totals)")
    code: str | None = Field(description="the code; null on a totals line")
    redemptions: int = Field(description="redemptions standing (not reversed)")
    reversed: int = Field(description="redemptions reversed")
    credit_granted_omr: int
    credit_granted_baisa: int = Field(description="the credit the standing redemptions granted")


class SovereignReportOut(BaseModel):
    sovereigns: list[str] = Field(description="the Sovereigns the hub's trail sources")
    trail_seq: int = Field(description="how far the read model has applied the hub's trail")
    rows: list[SovereignLine] = Field(description="per Sovereign and code")
    totals: list[SovereignLine] = Field(description="per Sovereign")


def _line(line: ReportLine) -> SovereignLine:
    return SovereignLine(
        sovereign=line.sovereign,
        scope="code" if line.code is not None else "sovereign",
        code=line.code,
        redemptions=line.redemptions,
        reversed=line.reversed,
        credit_granted_omr=whole_omr(line.credit_baisa),
        credit_granted_baisa=line.credit_baisa,
    )


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, f"{name} must be given once")
    return values[0] if values else None


async def sovereign_report(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    if not principal.has_any(ISSUER_ROLES):
        raise ApiError(403, ISSUER_FORBIDDEN)
    settings = request.app[SETTINGS]
    if not settings.hub:
        raise ApiError(404, NOT_HUB)
    unknown = sorted(set(request.query) - set(_KNOWN))
    if unknown:
        raise ApiError(
            400, f"unknown query parameter {unknown[0]!r} (code, global and format are known)"
        )
    form = _one(request, "format")
    if form not in (None, "json", "csv"):
        raise ApiError(400, "format must be json or csv")
    only_global = _one(request, "global")
    if only_global not in (None, "true", "false"):
        raise ApiError(400, "global must be true or false")
    codes: list[str] | None = request.query.getall("code", []) or None
    if codes is not None:
        if len(codes) > MAX_CODES:
            raise ApiError(400, f"at most {MAX_CODES} codes")
        try:  # normalised like every code; a control character never reaches Postgres
            codes = [normalise_code(c) for c in codes]
        except InvalidInput as exc:
            raise ApiError(400, f"code: {exc.message}") from exc
    pool = request.app[POOL]
    if only_global == "true":
        known = await sovereign_trail.global_codes(pool)
        if known is None:
            raise ApiError(409, "this hub has no global vouchers read model yet")
        codes = [c for c in known if codes is None or c in codes]
    figures = await sovereign_trail.report_figures(pool, codes)
    trail_seq = int(await pool.fetchval(sovereign_trail.CHECKPOINT))
    lines, totals = report_lines(figures, settings.sovereign_names)
    rows, sums = [_line(x) for x in lines], [_line(x) for x in totals]
    if form == "csv" or (form is None and "text/csv" in request.headers.get("Accept", "")):
        return _csv([*rows, *sums])
    return ok(
        SovereignReportOut(
            sovereigns=list(settings.sovereign_names), trail_seq=trail_seq, rows=rows, totals=sums
        )
    )


def _csv(rows: list[SovereignLine]) -> web.Response:
    return csv_response(rows, CSV_HEADER, "sovereign-report.csv")
