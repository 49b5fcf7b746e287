"""A moment PostgreSQL holds as infinity comes back from asyncpg without a time zone: the
campaigns' answers take it as the far end of time in UTC, never a 500 (an expiry of
9999-12-31T23:59:59.999999Z, refused at the door since, was stored so; found by schemathesis)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from voucher_ledger.http.campaigns import campaign_out
from voucher_ledger.http.vouchers import refusal_now, voucher_out


async def test_a_campaign_stored_with_infinite_ends_answers_in_utc(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        # what asyncpg made of the last and first moments Python has, written and read back
        ends = await conn.fetchrow(
            "SELECT $1::timestamptz AS expires_at, $2::timestamptz AS starts_at, "
            "$1::timestamptz::text AS stored",
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
        )
    finally:
        await conn.close()
    assert ends is not None
    assert ends["stored"] == "infinity"
    assert ends["expires_at"].tzinfo is None  # the case: naive on the way back
    now = datetime.now(UTC)
    row = {
        "campaign_id": "ABC123",
        "name": "forever",
        "description": "",
        "kind": "credit",
        "credit_baisa": 5000,
        "max_redemptions": 0,
        "budget_baisa": None,
        "code_max_redemptions": 1,
        "active": True,
        "revoked": False,
        "codes_issued": 0,
        "times_redeemed": 0,
        "granted_baisa": 0,
        "created_at": now,
        "updated_at": now,
        "revoked_at": None,
        "last_seq": 1,
        "starts_at": ends["starts_at"],
        "expires_at": ends["expires_at"],
        "plans": None,
        "min_order_baisa": 0,
        "new_organizations_only": False,
        "credit_valid_for_seconds": None,
        "discount": None,
    }
    out = campaign_out(row)
    assert out.accepting_redemptions is True
    assert out.expires_at == datetime.max.replace(tzinfo=UTC)
    assert out.starts_at == datetime.min.replace(tzinfo=UTC)
    assert '"expires_at":"9999-12-31T23:59:59.999999Z"' in out.model_dump_json()


async def test_a_voucher_stored_with_infinite_ends_previews_and_lists(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        ends = await conn.fetchrow(
            "SELECT 'infinity'::timestamptz AS expires_at, '-infinity'::timestamptz AS starts_at"
        )
    finally:
        await conn.close()
    assert ends is not None
    now = datetime.now(UTC)
    row = {
        "code": "FOREVER",
        "credit_baisa": 5000,
        "description": "",
        "active": True,
        "revoked": False,
        "max_redemptions": 0,
        "times_redeemed": 0,
        "created_at": now,
        "updated_at": now,
        "starts_at": ends["starts_at"],
        "expires_at": ends["expires_at"],
        "plans": None,
        "min_order_baisa": 0,
        "new_organizations_only": False,
        "credit_valid_for_seconds": None,
        "discount": None,
    }
    assert refusal_now(row) is None  # the public preview's check: redeemable, not a 500
    out = voucher_out(row)
    assert out.expires_at == datetime.max.replace(tzinfo=UTC)
    assert out.starts_at == datetime.min.replace(tzinfo=UTC)
