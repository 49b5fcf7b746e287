"""The seed's design: the Postgres-only redemption of seed-billing-spec.md section 4.5.

The schema is the seed's (section 3: ``customers``, ``promo_codes``, ``promo_redemptions``,
``credit_ledger``; only their primary keys, uniques and foreign keys, as there), and one attempt
is ``store.RedeemPromoCode(customerID, code)`` statement for statement, in one READ COMMITTED
transaction: lock the voucher row, check it, count the customer's redemptions, insert the
redemption, increment the counter, insert the credit, commit. Any refusal rolls back. The
customers exist beforehand (the seed's checkout creates them before it redeems).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from bench.config import Workload
from bench.servers import CpuMeter
from bench.stats import Outcome, RunStats, Unexpected, drive

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id TEXT UNIQUE NOT NULL,
  tenant_id TEXT NOT NULL,
  stripe_customer_id TEXT UNIQUE,
  email TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());

CREATE TABLE IF NOT EXISTS promo_codes (
  code TEXT PRIMARY KEY,
  credit_omr INT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  active BOOLEAN NOT NULL DEFAULT true,
  max_redemptions INT NOT NULL DEFAULT 0,
  times_redeemed INT NOT NULL DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());
ALTER TABLE promo_codes ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ;

CREATE TABLE IF NOT EXISTS credit_ledger (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id UUID NOT NULL REFERENCES customers(id),
  amount_omr INT NOT NULL,
  reason TEXT NOT NULL,
  order_id TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());
ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'active';

CREATE TABLE IF NOT EXISTS promo_redemptions (
  customer_id UUID NOT NULL REFERENCES customers(id),
  code TEXT NOT NULL REFERENCES promo_codes(code),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, code));
"""

LOCK = (
    "SELECT credit_omr, active, max_redemptions, times_redeemed, deleted_at "
    "FROM promo_codes WHERE code=$1 FOR UPDATE"
)
COUNT = "SELECT COUNT(*) FROM promo_redemptions WHERE customer_id=$1 AND code=$2"
INSERT_REDEMPTION = "INSERT INTO promo_redemptions (customer_id, code) VALUES ($1,$2)"
INCREMENT = "UPDATE promo_codes SET times_redeemed = times_redeemed + 1 WHERE code=$1"
INSERT_CREDIT = "INSERT INTO credit_ledger (customer_id, amount_omr, reason) VALUES ($1, $2, $3)"

CREDIT_OMR = 5


class Refused(Exception):
    """One of the seed's refusals (the transaction rolls back)."""


class CapReached(Refused):
    pass


async def redeem_promo_code(conn: Any, customer_id: uuid.UUID, code: str) -> int:
    """``store.RedeemPromoCode``: the credit granted, or :class:`Refused` after a rollback."""
    async with conn.transaction():  # BEGIN ... COMMIT, or ROLLBACK on any exception
        row = await conn.fetchrow(LOCK, code)
        if row is None or row["deleted_at"] is not None:
            raise Refused("promo code not found")
        if not row["active"]:
            raise Refused("promo code is not active")
        if row["max_redemptions"] > 0 and row["times_redeemed"] >= row["max_redemptions"]:
            raise CapReached("promo code has reached its redemption limit")
        if await conn.fetchval(COUNT, customer_id, code) > 0:
            raise Refused("promo code already redeemed by this customer")
        await conn.execute(INSERT_REDEMPTION, customer_id, code)
        await conn.execute(INCREMENT, code)
        await conn.execute(INSERT_CREDIT, customer_id, row["credit_omr"], f"promo:{code}")
    return int(row["credit_omr"])


async def prepare(url: str, workload: Workload) -> list[tuple[uuid.UUID, str]]:
    """Schema, the vouchers and one customer per attempt; returns the attempts in order."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        customers = [uuid.uuid4() for _ in range(workload.attempts)]
        await conn.copy_records_to_table(
            "customers",
            records=[(c, f"user-{c.hex}", "t1", "") for c in customers],
            columns=["id", "user_id", "tenant_id", "email"],
        )
        if workload.kind == "hot":
            codes = ["HOT-CODE"] * workload.attempts
            vouchers = [("HOT-CODE", CREDIT_OMR, workload.cap)]
        else:
            codes = [f"CODE-{i:06d}" for i in range(workload.attempts)]
            vouchers = [(code, CREDIT_OMR, workload.cap) for code in codes]
        await conn.copy_records_to_table(
            "promo_codes", records=vouchers, columns=["code", "credit_omr", "max_redemptions"]
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return list(zip(customers, codes, strict=True))


async def run(
    url: str, workload: Workload, synchronous_commit: str, pids: dict[str, int]
) -> RunStats:
    attempts = await prepare(url, workload)
    pool = await asyncpg.create_pool(
        url,
        min_size=workload.clients,
        max_size=workload.clients,
        server_settings={"synchronous_commit": synchronous_commit},
    )
    try:
        async with pool.acquire() as conn:
            settings = {
                "synchronous_commit": str(await conn.fetchval("SHOW synchronous_commit")),
                "fsync": str(await conn.fetchval("SHOW fsync")),
                "transaction_isolation": str(await conn.fetchval("SHOW transaction_isolation")),
            }

        async def attempt(item: tuple[uuid.UUID, str]) -> Outcome:
            async with pool.acquire() as conn:
                try:
                    await redeem_promo_code(conn, *item)
                except CapReached:
                    return "cap"
                except Refused as exc:
                    raise Unexpected(str(exc)) from exc
            return "ok"

        with CpuMeter(pids) as cpu:
            stats = await drive(workload.clients, attempts, attempt)
        async with pool.acquire() as conn:
            counted = await conn.fetchval("SELECT sum(times_redeemed) FROM promo_codes")
            rows = await conn.fetchval("SELECT count(*) FROM promo_redemptions")
            credits = await conn.fetchval("SELECT count(*) FROM credit_ledger")
    finally:
        await pool.close()
    stats.extra.update(
        {
            "settings": settings,
            "consistent": int(counted) == int(rows) == int(credits) == stats.ok,
            "redeemed_rows": int(rows),
            "cpu_s": cpu.seconds,
        }
    )
    return stats
