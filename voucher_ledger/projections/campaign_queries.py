"""Read-side queries of the campaigns (issue #21). SQL here, parameterised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from voucher_ledger.projections.queries import ReadModelUnavailable, _translated

CAMPAIGN_COLUMNS = """campaign_id, name, description, kind, credit_baisa, max_redemptions,
    budget_baisa, code_max_redemptions, active, revoked, codes_issued, times_redeemed,
    granted_baisa, created_at, updated_at, revoked_at, last_seq, starts_at, expires_at, plans,
    min_order_baisa, new_organizations_only, credit_valid_for_seconds, discount"""


@_translated
async def list_campaigns(
    pool: asyncpg.Pool, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Campaigns, newest first, and how many there are."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await conn.fetch(
            f"""SELECT {CAMPAIGN_COLUMNS} FROM campaigns
                ORDER BY created_at DESC, campaign_id LIMIT $1 OFFSET $2""",  # noqa: S608
            limit,
            offset,
        )
        total = await conn.fetchval("SELECT count(*) FROM campaigns")
    return [dict(r) for r in rows], int(total or 0)


@_translated
async def get_campaign(pool: asyncpg.Pool, campaign_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE campaign_id = $1",  # noqa: S608
        campaign_id,
    )
    return dict(row) if row is not None else None


@_translated
async def batch_codes(pool: asyncpg.Pool, campaign_id: str, batch: str) -> list[str]:
    """The codes one generation (its command id) wrote, in their order."""
    rows = await pool.fetch(
        "SELECT code FROM campaign_codes WHERE campaign_id = $1 AND batch = $2 ORDER BY ordinal",
        campaign_id,
        batch,
    )
    return [r["code"] for r in rows]


@_translated
async def timeline(pool: asyncpg.Pool, campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's active redemptions per hour (and the credit they granted)."""
    rows = await pool.fetch(
        """SELECT date_trunc('hour', redeemed_at) AS at, count(*)::integer AS redemptions,
                  sum(credit_baisa)::bigint AS credit_baisa
           FROM campaign_redemptions WHERE campaign_id = $1 AND reversed_at IS NULL
           GROUP BY 1 ORDER BY 1""",
        campaign_id,
    )
    return [dict(r) for r in rows]


_CODES_WITH_STATE = """
SELECT k.code, r.customers, r.users, r.last_at, coalesce(r.n, 0)::integer AS redemptions
FROM campaign_codes k
LEFT JOIN LATERAL (
    SELECT string_agg(customer_id, ';' ORDER BY seq) AS customers,
           string_agg(user_id, ';' ORDER BY seq) AS users,
           max(redeemed_at) AS last_at, count(*) AS n
    FROM campaign_redemptions x WHERE x.code = k.code AND x.reversed_at IS NULL
) r ON true
WHERE k.campaign_id = $1
ORDER BY k.ordinal
"""


async def codes_with_state(
    pool: asyncpg.Pool, campaign_id: str, chunk: int = 5000
) -> AsyncIterator[list[asyncpg.Record]]:
    """Every code of the campaign in generation order with its active redemptions, in chunks
    read from one cursor (one snapshot; 100,000 codes never held at once)."""
    try:
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(_CODES_WITH_STATE, campaign_id)
            while True:
                rows = await cursor.fetch(chunk)
                if not rows:
                    return
                yield rows
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise ReadModelUnavailable(str(exc)) from exc
