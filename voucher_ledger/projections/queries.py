"""Read-side queries for the HTTP layer. SQL lives here, parameterised, never built from input."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import asyncpg

from voucher_ledger.ledger.campaign_codes import campaign_of

P = ParamSpec("P")
R = TypeVar("R")


class ReadModelUnavailable(Exception):
    """Postgres did not answer: the API says 503, never 500."""


def _translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise ReadModelUnavailable(str(exc)) from exc

    return wrapper


_VOUCHER_COLUMNS = """code, credit_baisa, description, active, revoked, max_redemptions,
    times_redeemed, created_at, updated_at, revoked_at, last_seq, starts_at, expires_at,
    plans, min_order_baisa, new_organizations_only, credit_valid_for_seconds, discount,
    share_received, share_released, share_pool_empty"""


def _dict(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


@dataclass(frozen=True)
class VoucherTotals:
    """The vouchers a list query matches, all of them (not the page): how many, how many are
    active, their redemptions, and the credit those granted (at each voucher's current credit)."""

    count: int
    active: int
    redemptions: int
    credit_baisa: int


_VOUCHER_FILTER = "revoked = $1 AND ($2::text IS NULL OR strpos(code, $2) > 0)"


@_translated
async def list_vouchers(
    pool: asyncpg.Pool,
    *,
    limit: int = 1000,
    offset: int = 0,
    search: str | None = None,
    revoked: bool = False,
) -> tuple[list[dict[str, Any]], VoucherTotals]:
    """Live vouchers (or, with ``revoked``, the revoked ones), newest first, and the totals of
    every voucher the query matches (read in one snapshot with the page)."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await conn.fetch(
            f"""SELECT {_VOUCHER_COLUMNS} FROM vouchers WHERE {_VOUCHER_FILTER}
                ORDER BY created_at DESC, code LIMIT $3 OFFSET $4""",  # noqa: S608 - constants
            revoked,
            search,
            limit,
            offset,
        )
        totals = await conn.fetchrow(
            f"""SELECT count(*), count(*) FILTER (WHERE active),
                       coalesce(sum(times_redeemed), 0),
                       coalesce(sum(times_redeemed * credit_baisa), 0)
                FROM vouchers WHERE {_VOUCHER_FILTER}""",  # noqa: S608 - constants
            revoked,
            search,
        )
    assert totals is not None  # an aggregate always has its row
    return [dict(r) for r in rows], VoucherTotals(*(int(v) for v in totals))


# A campaign's code in the columns of a voucher row (``queries.get_voucher``): the campaign's
# credit, description and rules, the code's own cap and count; ``campaign_capped`` says the
# campaign's cap or budget takes no more redemptions.
_CODE_AS_VOUCHER = """
SELECT k.code, c.credit_baisa, c.description, c.active AND NOT c.revoked AS active, c.revoked,
       c.code_max_redemptions AS max_redemptions,
       (SELECT count(*) FROM campaign_redemptions r
         WHERE r.code = k.code AND r.reversed_at IS NULL)::integer AS times_redeemed,
       c.created_at, c.updated_at, c.revoked_at, c.last_seq, c.starts_at, c.expires_at, c.plans,
       c.min_order_baisa, c.new_organizations_only, c.credit_valid_for_seconds, c.campaign_id,
       c.discount,
       (c.max_redemptions > 0 AND c.times_redeemed >= c.max_redemptions)
         OR (c.budget_baisa IS NOT NULL AND c.budget_baisa - c.granted_baisa < c.credit_baisa)
         AS campaign_capped
FROM campaign_codes k JOIN campaigns c USING (campaign_id)
WHERE k.code = $1
"""


@_translated
async def get_voucher(pool: asyncpg.Pool, code: str) -> dict[str, Any] | None:
    """A voucher's row; a campaign's code (issue #21) as one."""
    if campaign_of(code) is not None:
        return _dict(await pool.fetchrow(_CODE_AS_VOUCHER, code))
    return _dict(
        await pool.fetchrow(
            f"SELECT {_VOUCHER_COLUMNS} FROM vouchers WHERE code = $1",  # noqa: S608
            code,
        )
    )


@_translated
async def history(
    pool: asyncpg.Pool, code: str, *, after_seq: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    campaign = campaign_of(code)
    if campaign is not None:  # the campaign's events that concern the code
        rows = await pool.fetch(_CAMPAIGN_CODE_HISTORY, campaign, code, after_seq, limit)
        return [dict(r) for r in rows]
    rows = await pool.fetch(
        """SELECT seq, event_id, type, version, actor_sub, actor_role, command_id, occurred_at,
                  event::text AS event
           FROM audit_log WHERE aggregate = 'voucher' AND aggregate_id = $1 AND seq > $2
           ORDER BY seq LIMIT $3""",
        code,
        after_seq,
        limit,
    )
    return [dict(r) for r in rows]


# A campaign code's history: its campaign's creation and revocation, the generation that made
# it, and its own redemptions and reversals.
_CAMPAIGN_CODE_HISTORY = """
SELECT seq, event_id, type, version, actor_sub, actor_role, command_id, occurred_at,
       event::text AS event
FROM audit_log
WHERE aggregate = 'campaign' AND aggregate_id = $1 AND seq > $3
  AND (type IN ('campaign.created', 'campaign.revoked')
       OR event -> 'event' ->> 'code' = $2
       OR (type = 'campaign.codes_generated' AND event -> 'event' -> 'codes' ? $2))
ORDER BY seq LIMIT $4
"""


@_translated
async def redemptions(
    pool: asyncpg.Pool, code: str, *, after_seq: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    table = "campaign_redemptions" if campaign_of(code) is not None else "redemptions"
    rows = await pool.fetch(
        f"""SELECT redemption_id, customer_id, credit_baisa, redeemed_at, seq, command_id,
                  reversed_at, reversed_seq, reversal_reason, user_id
           FROM {table} WHERE code = $1 AND seq > $2 ORDER BY seq LIMIT $3""",  # noqa: S608
        code,
        after_seq,
        limit,
    )
    return [dict(r) for r in rows]


# ------------------------------------------------------------------------- wallets and orders


@_translated
async def wallet(pool: asyncpg.Pool, customer_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT balance_baisa, reserved_baisa, last_seq FROM wallets WHERE customer_id = $1",
        customer_id,
    )
    return _dict(row)


@dataclass(frozen=True)
class AccountMembers:
    """Who an account (an Organization) belongs to, as far as the read models know: whether it
    exists at all, its owner (the user of its orders opened without a claim that did not fail;
    None when it has none), and whether every order in it is one user's (``only_user``)."""

    known: bool
    owner: str | None
    only_user: str | None

    def readable_by(self, user_id: str) -> bool:
        """The owner reads it; so does, while it has no owner, the one user whose orders (all
        failed) are all it holds: a refused checkout's trail is its user's own."""
        if self.owner is not None:
            return self.owner == user_id
        return self.only_user == user_id


@_translated
async def account_members(pool: asyncpg.Pool, account: str) -> AccountMembers:
    row = await pool.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM orders WHERE customer_id = $1)
                  OR EXISTS (SELECT 1 FROM wallets WHERE customer_id = $1) AS known,
                  (SELECT user_id FROM orders WHERE customer_id = $1 AND owns LIMIT 1) AS owner,
                  (SELECT min(user_id) FROM orders WHERE customer_id = $1
                   HAVING count(DISTINCT user_id) = 1) AS only_user""",
        account,
    )
    assert row is not None  # a SELECT without FROM always has its row
    return AccountMembers(known=bool(row["known"]), owner=row["owner"], only_user=row["only_user"])


@_translated
async def own_accounts(pool: asyncpg.Pool, user_id: str, *, limit: int = 2) -> list[str]:
    """The accounts ``user_id`` may read without a claim (at most ``limit``, in name order):
    those it owns, and those without an owner that hold only its orders."""
    rows = await pool.fetch(
        """SELECT DISTINCT o.customer_id FROM orders o
           WHERE o.user_id = $1
             AND (o.owns OR NOT EXISTS (
                  SELECT 1 FROM orders p WHERE p.customer_id = o.customer_id AND p.user_id <> $1))
           ORDER BY o.customer_id LIMIT $2""",
        user_id,
        limit,
    )
    return [str(r["customer_id"]) for r in rows]


@_translated
async def credit_lots(pool: asyncpg.Pool, customer_id: str) -> list[dict[str, Any]]:
    """The account's expiring grants with something left, soonest first (expired ones too,
    until their credit_expired event is applied)."""
    rows = await pool.fetch(
        """SELECT redemption_id, code, left_baisa, expires_at FROM credit_lots
           WHERE customer_id = $1 AND left_baisa > 0 ORDER BY expires_at, redemption_id""",
        customer_id,
    )
    return [dict(r) for r in rows]


@_translated
async def lots_due(pool: asyncpg.Pool, *, limit: int = 500) -> list[dict[str, Any]]:
    """Expiring grants past their expiry with something left: for the expiry sweeper."""
    rows = await pool.fetch(
        """SELECT redemption_id, customer_id, order_id FROM credit_lots
           WHERE left_baisa > 0 AND expires_at <= now() ORDER BY expires_at LIMIT $1""",
        limit,
    )
    return [dict(r) for r in rows]


@_translated
async def credit_entries(
    pool: asyncpg.Pool, customer_id: str, *, limit: int = 20
) -> list[dict[str, Any]]:
    """Movements of the balance (grants, payments, revocations), newest first."""
    rows = await pool.fetch(
        """SELECT seq, kind, balance_delta_baisa, reason, order_id, code, balance_after_baisa,
                  created_at
           FROM credit_entries
           WHERE customer_id = $1 AND kind IN ('granted', 'captured', 'revoked', 'expired')
           -- one order.placed may hold a grant and a capture: the capture came after it
           ORDER BY seq DESC, CASE kind WHEN 'granted' THEN 0 WHEN 'reserved' THEN 1 ELSE 2 END DESC
           LIMIT $2""",
        customer_id,
        limit,
    )
    return [dict(r) for r in rows]


@_translated
async def list_orders(
    pool: asyncpg.Pool, *, limit: int = 50, offset: int = 0, status: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Newest orders first, and how many orders the query matches (read in one snapshot)."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await conn.fetch(
            """SELECT order_id, customer_id, tenant_id, plan_id, apps, addons, lines, promo_code,
                      total_baisa, credit_applied_baisa, amount_due_baisa, amount_paid_baisa,
                      paid_by_credit, status, stripe_session_id, redemption_id, failure_reason,
                      created_at, updated_at, discount_baisa, discount_code
                FROM orders
                WHERE ($3::text IS NULL OR status = $3)
                ORDER BY created_at DESC, order_id LIMIT $1 OFFSET $2""",
            limit,
            offset,
            status,
        )
        total = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE ($1::text IS NULL OR status = $1)", status
        )
    return [dict(r) for r in rows], int(total)


@_translated
async def orders_to_recover(
    pool: asyncpg.Pool, *, older_than: float, limit: int = 200
) -> list[tuple[str, str]]:
    """(order id, customer id) of checkouts a crash may have left half-way: still opened, or
    awaiting payment without a session, after ``older_than`` seconds; and failed ones whose
    voucher slot was to be given back but is still taken."""
    rows = await pool.fetch(
        """SELECT order_id, customer_id FROM orders
           WHERE status IN ('opened', 'awaiting_payment') AND stripe_session_id IS NULL
             AND created_at < now() - make_interval(secs => $1)
           UNION
           SELECT o.order_id, o.customer_id FROM orders o
           JOIN redemptions r ON r.code = o.promo_code AND r.customer_id = o.customer_id
                             AND r.reversed_at IS NULL AND r.command_id = 'redeem-' || o.order_id
           WHERE o.status = 'failed' AND o.release_slot
           LIMIT $2""",
        older_than,
        limit,
    )
    return [(r["order_id"], r["customer_id"]) for r in rows]


# How far back recovery looks for a checkout's redemption whose order never reached the wallet.
UNPLACED_WINDOW_DAYS = 7


@_translated
async def unplaced_redemptions(
    pool: asyncpg.Pool, *, older_than: float, limit: int = 200
) -> list[dict[str, Any]]:
    """Live redemptions of checkouts (command ``redeem-<order>``), older than ``older_than``
    seconds and younger than :data:`UNPLACED_WINDOW_DAYS`, whose account shows no order
    ``<order>`` with that code: the checkout stopped between its redemption and its order, or
    its order is another checkout's (an Idempotency-Key reused with another code). Each with
    the order its redemption carried (``draft``, JSON text; NULL before issue #19)."""
    rows = await pool.fetch(
        """SELECT r.code, r.customer_id, substr(r.command_id, 8) AS order_id,
                  NULLIF(a.event -> 'event' -> 'order', 'null'::jsonb) AS draft
           FROM (SELECT code, customer_id, command_id, redeemed_at, seq FROM redemptions
                 WHERE reversed_at IS NULL AND command_id LIKE 'redeem-%'
                   AND redeemed_at < now() - make_interval(secs => $1)
                   AND redeemed_at > now() - make_interval(days => $2)
                 UNION ALL  -- a campaign's codes (issue #21) redeem as its events
                 SELECT code, customer_id, command_id, redeemed_at, seq FROM campaign_redemptions
                 WHERE reversed_at IS NULL AND command_id LIKE 'redeem-%'
                   AND redeemed_at < now() - make_interval(secs => $1)
                   AND redeemed_at > now() - make_interval(days => $2)) r
           LEFT JOIN audit_log a ON a.seq = r.seq
           WHERE NOT EXISTS (
                 SELECT 1 FROM orders o
                 WHERE o.order_id = substr(r.command_id, 8) AND o.customer_id = r.customer_id
                   AND o.promo_code = r.code)
           ORDER BY r.redeemed_at
           LIMIT $3""",
        older_than,
        UNPLACED_WINDOW_DAYS,
        limit,
    )
    return [dict(r) for r in rows]


# ------------------------------------------------------------------ subscriptions and invoices

_SUBSCRIPTION_COLUMNS = """id, customer_id, tenant_id, plan_id, status, amount_baisa, order_id,
    stripe_customer_id, current_period_start, current_period_end, created_at, updated_at"""
_INVOICE_COLUMNS = """id, customer_id, tenant_id, stripe_invoice_id, stripe_customer_id,
    amount_baisa, currency, status, period_start, period_end, pdf_url, created_at"""


@_translated
async def tenants_ordered_for(pool: asyncpg.Pool, user_id: str, accounts: list[str]) -> list[str]:
    """The Organizations named by the orders ``user_id`` placed from these accounts (a
    per-user account carried over names its Organizations only on its orders)."""
    rows = await pool.fetch(
        "SELECT DISTINCT tenant_id FROM orders WHERE user_id = $1 AND customer_id = ANY($2::text[])"
        " ORDER BY tenant_id",
        user_id,
        accounts,
    )
    return [str(r["tenant_id"]) for r in rows]


@_translated
async def subscription(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any] | None:
    return _dict(
        await pool.fetchrow(
            f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE tenant_id = $1",  # noqa: S608
            tenant_id,
        )
    )


@_translated
async def latest_subscription_of(
    pool: asyncpg.Pool, tenant_ids: list[str]
) -> dict[str, Any] | None:
    """The most recently changed subscription of these Organizations."""
    return _dict(
        await pool.fetchrow(
            f"""SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions
                 WHERE tenant_id = ANY($1::text[])
                 ORDER BY updated_at DESC, tenant_id LIMIT 1""",  # noqa: S608
            tenant_ids,
        )
    )


@_translated
async def invoices_of_tenants(
    pool: asyncpg.Pool, tenant_ids: list[str], limit: int = 100
) -> list[dict[str, Any]]:
    """The invoices of these Organizations, newest first."""
    rows = await pool.fetch(
        f"""SELECT {_INVOICE_COLUMNS} FROM invoices
             WHERE tenant_id = ANY($1::text[])
             ORDER BY created_at DESC, stripe_invoice_id LIMIT $2""",  # noqa: S608
        tenant_ids,
        limit,
    )
    return [dict(r) for r in rows]


@_translated
async def stripe_customer_of_tenant(pool: asyncpg.Pool, tenant_id: str) -> str | None:
    """The Stripe customer of the Organization's subscription, else of its latest invoice."""
    found = await pool.fetchval(
        """SELECT COALESCE(
               (SELECT stripe_customer_id FROM subscriptions WHERE tenant_id = $1),
               (SELECT stripe_customer_id FROM invoices
                 WHERE tenant_id = $1 AND stripe_customer_id IS NOT NULL
                 ORDER BY created_at DESC LIMIT 1))""",
        tenant_id,
    )
    return str(found) if found is not None else None


@dataclass(frozen=True)
class Revenue:
    mrr_baisa: int
    customers: int
    new_this_month: int
    active_subscriptions: int


@_translated
async def revenue(pool: asyncpg.Pool) -> Revenue:
    """MRR: each active subscription once, at its price per month (the seed joined orders to
    subscriptions, counting an Organization's every order, pending ones too, once per active
    subscription: B18). Customers: everyone who ever checked out; new: whose first checkout
    was this calendar month (UTC)."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        subs = await conn.fetchrow(
            """SELECT COALESCE(sum(amount_baisa), 0)::bigint AS mrr, count(*) AS active
                 FROM subscriptions WHERE status = 'active'"""
        )
        customers = await conn.fetchrow(
            """SELECT count(*) AS total,
                      count(*) FILTER (WHERE first_at >= date_trunc('month', now() AT TIME ZONE
                          'UTC') AT TIME ZONE 'UTC') AS new
                 FROM (SELECT min(created_at) AS first_at FROM orders GROUP BY customer_id) c"""
        )
    assert subs is not None
    assert customers is not None
    return Revenue(
        mrr_baisa=int(subs["mrr"]),
        customers=int(customers["total"]),
        new_this_month=int(customers["new"]),
        active_subscriptions=int(subs["active"]),
    )
