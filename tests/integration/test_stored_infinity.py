"""A moment PostgreSQL holds as infinity comes back from asyncpg without a time zone: the
answers take it as the far end of time in UTC, never a 500 (an expiry of
9999-12-31T23:59:59.999999Z, refused at the door since, was stored so; found by schemathesis)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from voucher_ledger.http.campaigns import campaign_out
from voucher_ledger.http.vouchers import refusal_now, voucher_out

FIRST, LAST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


async def _stored_window(pg_url: str) -> dict[str, Any]:
    """The rules of a voucher or campaign whose window is Python's first and last moments, as
    a read model's row has them: written by asyncpg, stored, and read back."""
    conn = await asyncpg.connect(pg_url)
    try:
        ends = await conn.fetchrow(
            "SELECT $1::timestamptz AS starts_at, $2::timestamptz AS expires_at, "
            "$1::timestamptz::text AS first, $2::timestamptz::text AS last",
            FIRST,
            LAST,
        )
    finally:
        await conn.close()
    assert ends is not None
    assert (ends["first"], ends["last"]) == ("-infinity", "infinity")
    assert ends["expires_at"].tzinfo is None  # the case: naive on the way back
    now = datetime.now(UTC)
    return {
        "starts_at": ends["starts_at"],
        "expires_at": ends["expires_at"],
        "plans": None,
        "min_order_baisa": 0,
        "new_organizations_only": False,
        "credit_valid_for_seconds": None,
        "discount": None,
        "created_at": now,
        "updated_at": now,
        "active": True,
        "revoked": False,
        "max_redemptions": 0,
        "times_redeemed": 0,
        "credit_baisa": 5000,
        "description": "",
    }


async def test_a_campaign_stored_with_infinite_ends_answers_in_utc(pg_url: str) -> None:
    row = {
        **await _stored_window(pg_url),
        "campaign_id": "ABC123",
        "name": "forever",
        "kind": "credit",
        "budget_baisa": None,
        "code_max_redemptions": 1,
        "codes_issued": 0,
        "granted_baisa": 0,
        "revoked_at": None,
        "last_seq": 1,
    }
    out = campaign_out(row)
    assert out.accepting_redemptions is True
    assert (out.starts_at, out.expires_at) == (FIRST, LAST)
    assert '"expires_at":"9999-12-31T23:59:59.999999Z"' in out.model_dump_json()


async def test_a_voucher_stored_with_infinite_ends_previews_and_lists(pg_url: str) -> None:
    row = {**await _stored_window(pg_url), "code": "FOREVER"}
    assert refusal_now(row) is None  # the public preview's check: redeemable, not a 500
    out = voucher_out(row)
    assert (out.starts_at, out.expires_at) == (FIRST, LAST)
