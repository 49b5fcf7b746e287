"""The ``reports`` read model (issue #21, deliverable 4): what each campaign cost and brought
in, as facts a window sums (``GET /billing/reports/campaigns?from=&to=``).

A report line (``scope``) is a campaign (its id), ``vouchers`` (the single vouchers: codes of no
campaign) or ``none`` (orders without a code). Every event that moves a figure of a line writes
one ``report_facts`` row per line it moves, at the event's time (``occurred_at``):

* codes issued: ``campaign.codes_generated`` (its codes), ``voucher.issued`` ``created`` (one);
* redemptions, net of reversals: ``campaign.code_redeemed`` / ``voucher.redeemed`` +1, their
  reversals -1 (at the reversal's time);
* credit granted: ``wallet.credit_granted`` (the grant's code's line), less ``grant_revoked``;
* credit spent: ``wallet.credit_captured``, on the lines of the grants the order's reservation
  took from: the expiring grants the reservation names (``lots``: exact), and for the rest,
  credit that never expires, the account's oldest such grants first (by stream sequence) as
  far as they have something left; a release gives each grant back what it gave, a revoked
  grant that never expires gives up its own remainder first, then the oldest grants';
* credit expired: ``wallet.credit_expired`` (the grant's code's line);
* orders, discount and revenue, when the order completes (``order.completed``, or an
  ``order.placed`` completed on credit): the order counts on the line of the code it redeemed
  (its ``promo_code``; ``none`` without one), its discount (``order.placed``'s ``discount``)
  on the line of the discount's code, and what Stripe was paid (``amount_paid_baisa`` of an
  order not paid by credit alone) as revenue on the order's line.

``verify`` folds the same figures from the stream with its own walk (``verify._report_fold``).
Folded in memory per batch like the other read models (``model``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from pydantic_core import from_json, to_json

from voucher_ledger.ledger.campaign_codes import campaign_of
from voucher_ledger.ledger.events import PLACED, placed_parts
from voucher_ledger.projections.model import Column, Conn, PlainEvent, Table, parameters_only
from voucher_ledger.projections.prefetch import Want

VOUCHERS_SCOPE = "vouchers"  # codes of no campaign
NO_CODE_SCOPE = "none"  # orders without a code

FIGURES = (
    "codes_issued",
    "redemptions",
    "granted_baisa",
    "spent_baisa",
    "expired_baisa",
    "discount_baisa",
    "orders",
    "revenue_baisa",
)

REPORT_FACTS = Table(
    "report_facts",
    Column("seq", "bigint"),
    Column("n", "integer"),
    Column("scope", "text"),
    Column("at", "timestamptz"),
    *(Column(f, "bigint" if f.endswith("_baisa") else "integer") for f in FIGURES),
)
REPORT_GRANTS = Table(
    "report_grants",
    Column("customer_id", "text"),
    Column("redemption_id", "text"),
    Column("scope", "text"),
    Column("expiring", "boolean"),
    Column("left_baisa", "bigint", updated=True),
    Column("seq", "bigint"),
)
REPORT_HOLDS = Table(
    "report_holds",
    Column("order_id", "text"),
    Column("takes", "jsonb", updated=True),
)
REPORT_ORDERS = Table(
    "report_orders",
    Column("order_id", "text"),
    Column("scope", "text"),
    Column("discount_scope", "text"),
    Column("discount_baisa", "bigint"),
)

_G = REPORT_GRANTS.index
_G_CUSTOMER, _G_RID = _G["customer_id"], _G["redemption_id"]
_G_SCOPE, _G_EXPIRING = _G["scope"], _G["expiring"]
_G_LEFT, _G_SEQ = _G["left_baisa"], _G["seq"]
_O = REPORT_ORDERS.index
# by the whole primary key (the Table's UPDATE matches on the first column only)
_GRANTS_UPDATE = parameters_only("""
UPDATE report_grants SET left_baisa = d.left_baisa
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(customer_id, redemption_id, left_baisa)
WHERE report_grants.customer_id = d.customer_id
  AND report_grants.redemption_id = d.redemption_id
""")
_GRANTS_OF = (
    f"SELECT {', '.join(REPORT_GRANTS.names)} FROM report_grants "  # noqa: S608 - constant names
    "WHERE customer_id = ANY($1::text[])"
)

_WALLET = frozenset(
    (
        "wallet.credit_granted",
        "wallet.grant_revoked",
        "wallet.credit_reserved",
        "wallet.credit_captured",
        "wallet.credit_released",
        "wallet.credit_expired",
    )
)
_ORDER = frozenset(("order.opened", "order.completed"))
_CODES = frozenset(
    (
        "voucher.issued",
        "voucher.redeemed",
        "voucher.redemption_reversed",
        "campaign.codes_generated",
        "campaign.code_redeemed",
        "campaign.redemption_reversed",
    )
)


def scope_of(code: str | None) -> str:
    """The report line of a (normalised) code: its campaign, else the single vouchers';
    ``none`` without a code."""
    if not code:
        return NO_CODE_SCOPE
    return campaign_of(code) or VOUCHERS_SCOPE


class ReportProjection:
    """``report_facts`` (and ``report_grants``, ``report_holds``, ``report_orders``)."""

    name = "reports"
    tables = (REPORT_FACTS.name, REPORT_GRANTS.name, REPORT_HOLDS.name, REPORT_ORDERS.name)
    keyed = frozenset((REPORT_GRANTS.name, REPORT_HOLDS.name, REPORT_ORDERS.name))

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]:
        """The reads :meth:`apply` will make (projections/prefetch.py)."""
        customers: set[str] = set()
        order_ids: set[str] = set()
        for item in events:
            event = item.doc["event"]
            kind = event["type"]
            if kind == PLACED or kind in _WALLET:
                customers.add(item.doc["aggregate_id"])
                order_ids.add(event["order_id"])
            elif kind in _ORDER:
                order_ids.add(event["order_id"])
        return [
            (_GRANTS_OF, customers),
            (REPORT_HOLDS.select, order_ids),
            (REPORT_ORDERS.select, order_ids),
        ]

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        # (seq, doc, event) of every event that matters here, order.placed as its parts
        # (the discount read from the placed event itself: its parts do not carry it).
        items: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []
        customers: set[str] = set()
        order_ids: set[str] = set()
        for item in events:
            event = item.doc["event"]
            kind = event["type"]
            if kind == PLACED:
                discount = event.get("discount")
                customers.add(item.doc["aggregate_id"])
                order_ids.add(event["order_id"])
                items.extend(
                    (item.seq, item.doc, p, discount)
                    for p in placed_parts(event)
                    if p["type"] in _WALLET or p["type"] in _ORDER
                )
            elif kind in _WALLET:
                customers.add(item.doc["aggregate_id"])
                order_ids.add(event["order_id"])
                items.append((item.seq, item.doc, event, None))
            elif kind in _ORDER:
                order_ids.add(event["order_id"])
                items.append((item.seq, item.doc, event, None))
            elif kind in _CODES:
                items.append((item.seq, item.doc, event, None))
        if not items:
            return
        grants: dict[str, dict[str, list[Any]]] = {}  # customer -> redemption id -> row
        grants_existed: set[tuple[str, str]] = set()
        if customers:
            for r in await conn.fetch(_GRANTS_OF, list(customers)):
                grants.setdefault(r["customer_id"], {})[r["redemption_id"]] = list(r)
                grants_existed.add((r["customer_id"], r["redemption_id"]))
        holds: dict[str, list[list[Any]]] = {}
        orders: dict[str, list[Any]] = {}
        if order_ids:
            holds = {
                r["order_id"]: from_json(r["takes"])
                for r in await conn.fetch(REPORT_HOLDS.select, list(order_ids))
            }
            orders = {
                r["order_id"]: list(r)
                for r in await conn.fetch(REPORT_ORDERS.select, list(order_ids))
            }
        holds_existed, orders_existed = set(holds), set(orders)
        facts: list[tuple[Any, ...]] = []
        last_seq, n = 0, 0

        def fact(seq: int, at: Any, scope: str, **figures: int) -> None:
            nonlocal last_seq, n
            n = n + 1 if seq == last_seq else 0
            last_seq = seq
            facts.append((seq, n, scope, at, *(figures.get(f, 0) for f in FIGURES)))

        for seq, doc, event, discount in items:
            kind, at = event["type"], doc["occurred_at"]
            if kind == "voucher.issued":
                if event["change"] == "created":
                    fact(seq, at, VOUCHERS_SCOPE, codes_issued=1)
            elif kind == "campaign.codes_generated":
                fact(seq, at, event["campaign_id"], codes_issued=len(event["codes"]))
            elif kind in ("voucher.redeemed", "campaign.code_redeemed"):
                fact(seq, at, scope_of(event["code"]), redemptions=1)
            elif kind in ("voucher.redemption_reversed", "campaign.redemption_reversed"):
                fact(seq, at, scope_of(event["code"]), redemptions=-1)
            elif kind == "order.opened":
                if event["order_id"] not in orders:
                    orders[event["order_id"]] = REPORT_ORDERS.new_row(
                        order_id=event["order_id"],
                        scope=scope_of(event["promo_code"]),
                        discount_scope=scope_of(discount["code"]) if discount else None,
                        discount_baisa=discount["amount_baisa"] if discount else 0,
                    )
            elif kind == "order.completed":
                order = orders.get(event["order_id"])
                scope = order[_O["scope"]] if order is not None else NO_CODE_SCOPE
                paid = 0 if event["paid_by_credit"] else event["amount_paid_baisa"]
                fact(seq, at, scope, orders=1, revenue_baisa=paid)
                if order is not None and order[_O["discount_scope"]] is not None:
                    fact(
                        seq,
                        at,
                        order[_O["discount_scope"]],
                        discount_baisa=order[_O["discount_baisa"]],
                    )
            else:
                customer = doc["aggregate_id"]
                mine = grants.setdefault(customer, {})
                _wallet(customer, mine, holds, event, seq, functools.partial(fact, seq, at))

        if facts:
            await conn.copy_records_to_table(
                REPORT_FACTS.name, columns=REPORT_FACTS.names, records=facts
            )
        rows = [r for mine in grants.values() for r in mine.values()]
        created = [tuple(r) for r in rows if (r[_G_CUSTOMER], r[_G_RID]) not in grants_existed]
        changed = [r for r in rows if (r[_G_CUSTOMER], r[_G_RID]) in grants_existed]
        if created:
            await conn.copy_records_to_table(
                REPORT_GRANTS.name, columns=REPORT_GRANTS.names, records=created
            )
        if changed:
            await conn.execute(
                _GRANTS_UPDATE,
                [r[_G_CUSTOMER] for r in changed],
                [r[_G_RID] for r in changed],
                [r[_G_LEFT] for r in changed],
            )
        new_holds = [(o, to_json(t).decode()) for o, t in holds.items() if o not in holds_existed]
        old_holds = [[o, to_json(t).decode()] for o, t in holds.items() if o in holds_existed]
        if new_holds:
            await conn.copy_records_to_table(
                REPORT_HOLDS.name, columns=REPORT_HOLDS.names, records=new_holds
            )
        if old_holds:
            await conn.execute(REPORT_HOLDS.update, *REPORT_HOLDS.update_args(old_holds))
        new_orders = [tuple(r) for o, r in orders.items() if o not in orders_existed]
        if new_orders:
            await conn.copy_records_to_table(
                REPORT_ORDERS.name, columns=REPORT_ORDERS.names, records=new_orders
            )


def _oldest_lasting(mine: dict[str, list[Any]]) -> list[list[Any]]:
    """The account's grants that never expire and have something left, oldest first."""
    return sorted(
        (g for g in mine.values() if not g[_G_EXPIRING] and g[_G_LEFT] > 0),
        key=lambda g: g[_G_SEQ],
    )


def _take_lasting(
    mine: dict[str, list[Any]], amount: int, first: str | None = None
) -> list[list[Any]]:
    """Take ``amount`` of credit that never expires: from grant ``first`` first (a revoked
    grant's own remainder), then the oldest grants; the takes ``[rid, scope, amount, False]``."""
    takes: list[list[Any]] = []
    order = _oldest_lasting(mine)
    if first is not None and first in mine and not mine[first][_G_EXPIRING]:
        order = [mine[first], *(g for g in order if g[_G_RID] != first)]
    for g in order:
        if amount <= 0:
            break
        part = min(amount, g[_G_LEFT])
        if part > 0:
            g[_G_LEFT] -= part
            amount -= part
            takes.append([g[_G_RID], g[_G_SCOPE], part, False])
    if amount > 0:  # more than the grants hold (a history without grants): the single vouchers'
        takes.append([None, VOUCHERS_SCOPE, amount, False])
    return takes


def _wallet(
    customer: str,
    mine: dict[str, list[Any]],
    holds: dict[str, list[list[Any]]],
    event: dict[str, Any],
    seq: int,
    fact: Callable[..., None],
) -> None:
    """One credit movement of an account (``mine``: its grants by redemption id)."""
    kind, amount = event["type"], event["amount_baisa"]
    if kind == "wallet.credit_granted":
        rid = event["redemption_id"]
        scope = scope_of(event["code"])
        expiring = event["expires_at"] is not None
        if rid not in mine:
            mine[rid] = REPORT_GRANTS.new_row(
                customer_id=customer,
                redemption_id=rid,
                scope=scope,
                expiring=expiring,
                left_baisa=0 if expiring else amount,
                seq=seq,
            )
        fact(scope, granted_baisa=amount)
    elif kind == "wallet.grant_revoked":
        fact(scope_of(event["code"]), granted_baisa=-amount)
        lasting = amount - sum(s["amount_baisa"] for s in event["lots"])
        if lasting > 0:
            _take_lasting(mine, lasting, first=event["redemption_id"])
    elif kind == "wallet.credit_reserved":
        takes = [
            [s["redemption_id"], _scope_of_grant(mine, s["redemption_id"]), s["amount_baisa"], True]
            for s in event["lots"]
        ]
        lasting = amount - sum(s["amount_baisa"] for s in event["lots"])
        if lasting > 0:
            takes.extend(_take_lasting(mine, lasting))
        holds.setdefault(event["order_id"], []).extend(takes)
    elif kind == "wallet.credit_released":
        hold = holds.get(event["order_id"], [])
        for share in event["lots"]:  # back to the expiring grants they came from
            _give_back(hold, share["redemption_id"], share["amount_baisa"], True, mine)
        lasting = amount - sum(s["amount_baisa"] for s in event["lots"])
        if lasting > 0:
            _give_back(hold, None, lasting, False, mine)
        holds[event["order_id"]] = [t for t in hold if t[2] > 0]
    elif kind == "wallet.credit_captured":
        hold = holds.get(event["order_id"], [])
        spent: dict[str, int] = {}
        left = amount
        for take in hold:
            part = min(left, take[2])
            if part > 0:
                spent[take[1]] = spent.get(take[1], 0) + part
                take[2] -= part
                left -= part
        if left > 0:
            spent[VOUCHERS_SCOPE] = spent.get(VOUCHERS_SCOPE, 0) + left
        holds[event["order_id"]] = [t for t in hold if t[2] > 0]
        for scope, part in spent.items():
            fact(scope, spent_baisa=part)
    else:  # wallet.credit_expired
        fact(scope_of(event["code"]), expired_baisa=amount)


def _scope_of_grant(mine: dict[str, list[Any]], redemption_id: str) -> str:
    grant = mine.get(redemption_id)
    return grant[_G_SCOPE] if grant is not None else VOUCHERS_SCOPE


def _give_back(
    hold: list[list[Any]],
    redemption_id: str | None,
    amount: int,
    expiring: bool,
    mine: dict[str, list[Any]],
) -> None:
    """Return ``amount`` of an order's hold: the takes of ``redemption_id`` (an expiring
    grant's), or (None) the takes from credit that never expires, first to last; what came
    from a grant that never expires goes back to its remainder."""
    for take in hold:
        if amount <= 0:
            return
        if take[3] != expiring or (redemption_id is not None and take[0] != redemption_id):
            continue
        part = min(amount, take[2])
        take[2] -= part
        amount -= part
        if not expiring and take[0] is not None and take[0] in mine:
            mine[take[0]][_G_LEFT] += part
