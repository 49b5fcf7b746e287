"""Read-side query of the reports read model (issue #21): each report line's figures over a
window, from ``report_facts`` (``projections/reports.py``). SQL here, parameterised."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from voucher_ledger.projections.queries import _translated
from voucher_ledger.projections.reports import FIGURES, NO_CODE_SCOPE, VOUCHERS_SCOPE

_SUMS = ", ".join(f"coalesce(sum(f.{f}), 0)::bigint AS {f}" for f in FIGURES)


@_translated
async def campaign_report(
    pool: asyncpg.Pool, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """One row per campaign (every campaign, newest first; zeros when nothing happened in the
    window), then the single vouchers' and the orders without a code: ``scope``,
    ``campaign_id``, ``name`` and the :data:`FIGURES` of the facts in ``[since, until)``."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await conn.fetch(
            f"""SELECT f.scope, {_SUMS} FROM report_facts f
                WHERE ($1::timestamptz IS NULL OR f.at >= $1)
                  AND ($2::timestamptz IS NULL OR f.at < $2)
                GROUP BY f.scope""",  # noqa: S608 - constant names
            since,
            until,
        )
        campaigns = await conn.fetch(
            "SELECT campaign_id, name FROM campaigns ORDER BY created_at DESC, campaign_id"
        )
    sums = {r["scope"]: {f: int(r[f]) for f in FIGURES} for r in rows}
    zero = dict.fromkeys(FIGURES, 0)
    out = [
        {
            "scope": "campaign",
            "campaign_id": c["campaign_id"],
            "name": c["name"],
            **sums.pop(c["campaign_id"], zero),
        }
        for c in campaigns
    ]
    vouchers = sums.pop(VOUCHERS_SCOPE, zero)
    none = sums.pop(NO_CODE_SCOPE, zero)
    # a campaign the campaigns read model has not applied yet: its facts under its id
    out.extend(
        {"scope": "campaign", "campaign_id": cid, "name": "", **figures}
        for cid, figures in sorted(sums.items())
    )
    out.append(
        {"scope": VOUCHERS_SCOPE, "campaign_id": None, "name": "single vouchers", **vouchers}
    )
    out.append(
        {"scope": NO_CODE_SCOPE, "campaign_id": None, "name": "orders without a code", **none}
    )
    return out
