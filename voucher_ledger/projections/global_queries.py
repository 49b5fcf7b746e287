"""Read-side queries of the global vouchers at the hub (issue #22). SQL here, parameterised."""

from __future__ import annotations

from typing import Any

import asyncpg

from voucher_ledger.projections.queries import _translated

GLOBAL_COLUMNS = """code, credit_baisa, description, max_redemptions, share, revoked,
    revoked_at, pool, created_at, updated_at, last_seq, starts_at, expires_at, plans,
    min_order_baisa, new_organizations_only, credit_valid_for_seconds, discount"""
SHARE_COLUMNS = """code, sovereign, allotted, released, requested, answered, redeemed,
    trail_seq, updated_at"""

Global = tuple[dict[str, Any], list[dict[str, Any]]]


async def _with_shares(conn: Any, rows: list[asyncpg.Record]) -> list[Global]:
    codes = [r["code"] for r in rows]
    shares: dict[str, list[dict[str, Any]]] = {c: [] for c in codes}
    for s in await conn.fetch(
        f"""SELECT {SHARE_COLUMNS} FROM global_shares
            WHERE code = ANY($1::text[]) ORDER BY code, sovereign""",  # noqa: S608
        codes,
    ):
        shares[s["code"]].append(dict(s))
    return [(dict(r), shares[r["code"]]) for r in rows]


@_translated
async def list_globals(pool: asyncpg.Pool, *, limit: int, offset: int) -> tuple[list[Global], int]:
    """Global vouchers with their Sovereigns' shares, newest first, and how many there are."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await conn.fetch(
            f"""SELECT {GLOBAL_COLUMNS} FROM global_vouchers
                ORDER BY created_at DESC, code LIMIT $1 OFFSET $2""",  # noqa: S608
            limit,
            offset,
        )
        total = await conn.fetchval("SELECT count(*) FROM global_vouchers")
        out = await _with_shares(conn, list(rows))
    return out, int(total or 0)


@_translated
async def get_global(pool: asyncpg.Pool, code: str) -> Global | None:
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        row = await conn.fetchrow(
            f"SELECT {GLOBAL_COLUMNS} FROM global_vouchers WHERE code = $1",  # noqa: S608
            code,
        )
        if row is None:
            return None
        return (await _with_shares(conn, [row]))[0]
