"""``voucher-ledger import-seed`` (issue #23, deliverable 5) against a database built from the
seed's own schema (spec section 3) with realistic rows and the seed's quirks (section 8): codes
stored in lower case, a ledger row without an order, ``times_redeemed`` disagreeing with
``promo_redemptions``, an invoice hit by the fix-up without x1000, a pending order never sent
to Stripe. A real ``voucher-ledger serve`` projects what the import writes.

What is proven: the import reconciles exactly, twice in a row (the second run writes nothing);
afterwards the API shows the vouchers' counters, every customer's balance, the orders, the
subscriptions and invoices; a code our rules refuse is listed and nothing is written; a ledger
that moved on since the import is a difference (exit 1).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.conftest import fresh_database, wait_until
from tests.e2e.checkout_helpers import Shop, shop

OMR = 1000
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

# The seed's store.Migrate (spec section 3), as it runs.
SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(), user_id TEXT UNIQUE NOT NULL,
  tenant_id TEXT NOT NULL, stripe_customer_id TEXT UNIQUE, email TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS subscriptions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(), customer_id UUID NOT NULL REFERENCES customers(id),
  tenant_id TEXT NOT NULL, stripe_subscription_id TEXT UNIQUE, plan_id TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'active', current_period_start TIMESTAMPTZ,
  current_period_end TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS orders (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(), customer_id UUID NOT NULL REFERENCES customers(id),
  tenant_id TEXT NOT NULL, plan_id TEXT NOT NULL, apps JSONB NOT NULL DEFAULT '[]',
  addons JSONB NOT NULL DEFAULT '[]', amount_omr INT NOT NULL,
  amount_baisa BIGINT NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending',
  stripe_session_id TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
ALTER TABLE orders ADD COLUMN IF NOT EXISTS amount_baisa BIGINT NOT NULL DEFAULT 0;
UPDATE orders SET amount_baisa = amount_omr * 1000 WHERE amount_baisa = 0 AND amount_omr > 0;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS promo_code TEXT;
CREATE TABLE IF NOT EXISTS invoices (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(), customer_id UUID NOT NULL REFERENCES customers(id),
  tenant_id TEXT NOT NULL, stripe_invoice_id TEXT UNIQUE, amount_omr INT NOT NULL,
  amount_baisa BIGINT NOT NULL DEFAULT 0, currency TEXT NOT NULL DEFAULT 'omr',
  status TEXT NOT NULL DEFAULT 'draft', period_start TIMESTAMPTZ, period_end TIMESTAMPTZ,
  pdf_url TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS stripe_webhook_events (
  event_id TEXT PRIMARY KEY, event_type TEXT NOT NULL DEFAULT '',
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now(), status TEXT NOT NULL DEFAULT 'processed');
CREATE TABLE IF NOT EXISTS settings (
  id INT PRIMARY KEY DEFAULT 1, stripe_secret_key TEXT NOT NULL DEFAULT '',
  stripe_webhook_secret TEXT NOT NULL DEFAULT '', stripe_public_key TEXT NOT NULL DEFAULT '',
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), CONSTRAINT settings_single_row CHECK (id = 1));
INSERT INTO settings (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS promo_codes (
  code TEXT PRIMARY KEY, credit_omr INT NOT NULL, description TEXT NOT NULL DEFAULT '',
  active BOOLEAN NOT NULL DEFAULT true, max_redemptions INT NOT NULL DEFAULT 0,
  times_redeemed INT NOT NULL DEFAULT 0, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
ALTER TABLE promo_codes ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ;
CREATE TABLE IF NOT EXISTS credit_ledger (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(), customer_id UUID NOT NULL REFERENCES customers(id),
  amount_omr INT NOT NULL, reason TEXT NOT NULL, order_id TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());
ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'active';
CREATE TABLE IF NOT EXISTS promo_redemptions (
  customer_id UUID NOT NULL REFERENCES customers(id),
  code TEXT NOT NULL REFERENCES promo_codes(code),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (customer_id, code));
"""


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class Seed:
    """A seed billing database with the rows a Sovereign would have."""

    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag
        self.users = {name: f"user-{name}-{tag}" for name in ("alice", "bob", "carol")}
        self.ids: dict[str, uuid.UUID] = {}
        self.orders: dict[str, uuid.UUID] = {}

    def code(self, stem: str) -> str:
        return f"{stem}-{self.tag}"

    async def fill(self, extra_codes: tuple[str, ...] = ()) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(SEED_SCHEMA)
            for n, (name, sub) in enumerate(self.users.items()):
                self.ids[name] = await conn.fetchval(
                    "INSERT INTO customers (user_id, tenant_id, email, stripe_customer_id, "
                    "created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    sub,
                    f"org-{name}-{self.tag}",
                    f"{name}@example.com",
                    f"cus_{name}_{self.tag}" if name == "bob" else None,
                    at(n),
                )
            welcome, spring = self.code("WELCOME50"), self.code("spring10").lower()
            old, sleepy = self.code("OLD-CAMPAIGN"), self.code("INACTIVE")
            promos = [
                (welcome, 50, "Welcome", True, 0, 2, at(0), None),
                (spring, 10, "stored in lower case", True, 5, 3, at(1), None),  # counter says 3
                (old, 20, "ended", False, 1, 1, at(2), at(40)),
                (sleepy, 5, "", False, 0, 0, at(3), None),
                *((c, 5, "", True, 0, 0, at(4), None) for c in extra_codes),
            ]
            await conn.executemany(
                "INSERT INTO promo_codes (code, credit_omr, description, active, max_redemptions,"
                " times_redeemed, created_at, deleted_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                promos,
            )
            a, b, c = self.ids["alice"], self.ids["bob"], self.ids["carol"]
            await conn.executemany(
                "INSERT INTO promo_redemptions (customer_id, code, created_at) VALUES ($1,$2,$3)",
                [(a, welcome, at(10)), (b, welcome, at(11)), (c, spring, at(12)), (a, old, at(13))],
            )
            for key, cust, tenant, plan, omr, status, session, promo, hours in (
                ("A1", a, "alice", "business", 29, "completed", None, welcome, 10),
                ("B1", b, "bob", "starter", 9, "completed", "cs_live_b1", None, 20),
                ("C1", c, "carol", "business", 29, "pending", "cs_live_c1", spring, 30),
                ("C2", c, "carol", "starter", 9, "pending", None, None, 31),  # an orphan (B20)
            ):
                self.orders[key] = await conn.fetchval(
                    "INSERT INTO orders (customer_id, tenant_id, plan_id, apps, addons, amount_omr,"
                    " amount_baisa, status, stripe_session_id, promo_code, created_at) VALUES"
                    " ($1, $2, $3, '[\"wordpress\"]', '[]', $4, $5, $6, $7, $8, $9) RETURNING id",
                    cust,
                    f"org-{tenant}-{self.tag}",
                    plan,
                    omr,
                    omr * OMR,
                    status,
                    session,
                    promo,
                    at(hours),
                )
            await conn.executemany(
                "INSERT INTO credit_ledger (customer_id, amount_omr, reason, order_id, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                [
                    (a, 50, f"promo:{welcome}", None, at(10)),
                    (a, -29, "order-payment", str(self.orders["A1"]), at(10.01)),
                    (a, 20, f"promo:{old}", None, at(13)),
                    (b, 50, f"promo:{welcome}", None, at(11)),
                    (b, -9, "order-payment", None, at(15)),  # a spend without its order
                    (c, 10, f"promo:{spring}", None, at(12)),
                ],
            )
            await conn.executemany(
                "INSERT INTO subscriptions (customer_id, tenant_id, plan_id, status, created_at)"
                " VALUES ($1, $2, $3, 'active', $4)",
                [
                    (a, f"org-alice-{self.tag}", "business", at(10.01)),
                    (b, f"org-bob-{self.tag}", "", at(20.5)),
                ],
            )
            await conn.executemany(
                "INSERT INTO invoices (customer_id, tenant_id, stripe_invoice_id, amount_omr,"
                " amount_baisa, status, period_start, period_end, pdf_url, created_at)"
                " VALUES ($1, $2, $3, $4, $5, 'paid', $6, $7, $8, $9)",
                [
                    (
                        b,
                        f"org-bob-{self.tag}",
                        f"in_b1_{self.tag}",
                        9,
                        9000,
                        at(20),
                        at(740),
                        "https://pay.stripe.com/b1.pdf",
                        at(20.5),
                    ),
                    # the seed's fix-up copied OMR into baisa without x1000 (B22)
                    (
                        a,
                        f"org-alice-{self.tag}",
                        f"in_a0_{self.tag}",
                        12,
                        12,
                        None,
                        None,
                        None,
                        at(5),
                    ),
                ],
            )
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def ledger(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Shop]:
    async with shop(tmp_path_factory.mktemp("import"), nats_url, pg_url, "imp") as s:
        yield s


@pytest.fixture
async def seed(pg_url: str) -> AsyncIterator[Seed]:
    async with fresh_database(pg_url, "seed") as url:
        yield Seed(url, uuid.uuid4().hex[:6].upper())


async def import_seed(s: Shop, source: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NATS_URL": s.server.nats_url,
        "SUBJECT_PREFIX": s.server.prefix,
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(s.server.data_dir),  # signs with the processors' key, found there
    }
    for name in ("DATABASE_URL", "JWT_SECRET", "LEDGER_SIGNING"):
        env.pop(name, None)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", "import-seed", "--from", source, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def projected(s: Shop) -> None:
    head = await s.stream_seq()

    async def caught_up() -> bool:
        rows = await s.db("SELECT min(last_seq) AS low FROM projection_checkpoints")
        return bool(rows[0]["low"] is not None and rows[0]["low"] >= head)

    await wait_until(caught_up, what="the projections")


async def as_member(s: Shop, sub: str, path: str) -> Any:
    reply = await s.request("GET", path, sub=sub, role="member")
    assert reply.status == 200, reply
    return reply.json


async def test_an_import_reconciles_exactly_twice_and_the_api_shows_it(
    ledger: Shop, seed: Seed
) -> None:
    await seed.fill()
    before = await ledger.stream_seq()
    first = await import_seed(ledger, seed.url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "reconciled: no difference" in first.stdout
    assert "vouchers: source 4, ledger 4" in first.stdout
    assert "redemptions: source 4, ledger 4" in first.stdout
    assert "orders: source 4, ledger 4" in first.stdout
    assert "invoices: source 2, ledger 2" in first.stdout
    # the quirks are carried and said
    spring = seed.code("SPRING10")
    assert f"promo code {spring.lower()!r} carried as {spring}" in first.stdout
    assert "times_redeemed is 3, its promo_redemptions hold 1" in first.stdout
    assert "names no order of the customer" in first.stdout
    assert "without x1000" in first.stdout
    written = await ledger.stream_seq()
    assert written > before

    second = await import_seed(ledger, seed.url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "wrote 0 events" in second.stdout
    assert "reconciled: no difference" in second.stdout
    assert await ledger.stream_seq() == written

    await projected(ledger)
    welcome = await ledger.voucher(seed.code("WELCOME50"))
    assert (welcome["times_redeemed"], welcome["credit_omr"], welcome["active"]) == (2, 50, True)
    assert (await ledger.voucher(spring))["times_redeemed"] == 1
    old = await ledger.voucher(seed.code("OLD-CAMPAIGN"))
    assert (old["revoked"], old["times_redeemed"]) == (True, 1)
    alice, bob, carol = (seed.users[n] for n in ("alice", "bob", "carol"))
    balances = {sub: (await ledger.balance(sub))["credit_omr"] for sub in (alice, bob, carol)}
    assert balances == {alice: 50 - 29 + 20, bob: 50 - 9, carol: 10}
    history = (await ledger.balance(alice))["entries"]
    assert [e["amount_omr"] for e in history] == [20, -29, 50]  # newest first, original times
    assert history[-1]["created_at"].startswith("2026-03-01T19:00")
    orders = {o["id"]: o for o in await ledger.orders() if o["customer_id"] in balances}
    states = {
        key: (orders[str(oid)]["status"], orders[str(oid)]["state"])
        for key, oid in seed.orders.items()
    }
    assert states == {
        "A1": ("completed", "completed"),
        "B1": ("completed", "completed"),
        "C1": ("pending", "awaiting_payment"),
        "C2": ("abandoned", "abandoned"),
    }
    assert orders[str(seed.orders["A1"])]["paid_by_credit"] is True
    sub_alice = await as_member(ledger, alice, f"/billing/subscription/org-alice-{seed.tag}")
    assert (sub_alice["plan_id"], sub_alice["amount_omr"]) == ("business", 29)
    [invoice] = await as_member(ledger, bob, f"/billing/invoices/org-bob-{seed.tag}")
    assert (invoice["amount_baisa"], invoice["status"]) == (9000, "paid")
    # bob's Stripe customer came over with his invoice: the portal would open it
    stripe_customer = await ledger.db(
        "SELECT stripe_customer_id FROM subscriptions WHERE tenant_id = $1", f"org-bob-{seed.tag}"
    )
    assert stripe_customer[0]["stripe_customer_id"] == f"cus_bob_{seed.tag}"
    [legacy] = await as_member(ledger, alice, f"/billing/invoices/org-alice-{seed.tag}")
    assert legacy["amount_baisa"] == 12 * OMR

    # the ledger moves on (a voucher revoked here): the source no longer matches, exit 1
    reply = await ledger.request("DELETE", f"/billing/vouchers/revoke/{seed.code('WELCOME50')}")
    assert reply.status == 200, reply
    moved = await import_seed(ledger, seed.url)
    assert moved.returncode == 1, moved.stdout + moved.stderr
    assert f"DIFF voucher {seed.code('WELCOME50')} revoked: source False, ledger True" in (
        moved.stdout
    )


async def test_codes_that_cannot_be_carried_are_listed_and_nothing_is_written(
    ledger: Shop, seed: Seed
) -> None:
    """PROMO.2026 breaks our code rule; a lower-case twin of a code normalises onto it."""
    twin = seed.code("WELCOME50").lower()
    await seed.fill(extra_codes=("PROMO.2026", twin))
    before = await ledger.stream_seq()
    result = await import_seed(ledger, seed.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot carry: promo code 'PROMO.2026': not a valid code here" in result.stderr
    assert f"cannot carry: promo code {twin!r}: normalises to {twin.upper()}" in result.stderr
    assert "nothing was written" in result.stderr
    assert await ledger.stream_seq() == before
    unreachable = await import_seed(ledger, "postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 2
    assert "cannot connect to the seed database" in unreachable.stderr
