"""The ``wallets`` read model: ``wallets``, ``credit_entries`` and ``orders``.

A batch is folded in memory (see ``model``): a credit movement changes its wallet row and
records the entry with the balance after it, so every entry carries the running balance the
CHECK constraints guard; the wallet and order rows a batch touches are read first, new ones go
in with ``COPY`` and changed ones with one ``UPDATE`` per table; entries with ``COPY``. A stream
that one statement per event would refuse (an order opened twice, a credit movement that would
make a wallet negative) is refused here too, with the same kind of error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic_core import to_json

from voucher_ledger.projections.model import Column, Conn, PlainEvent, Table, expand_placed
from voucher_ledger.projections.prefetch import Want

WALLETS = Table(
    "wallets",
    Column("customer_id", "text"),
    Column("balance_baisa", "bigint", updated=True),
    Column("reserved_baisa", "bigint", updated=True),
    Column("updated_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
)
CREDIT_ENTRIES = Table(
    "credit_entries",
    Column("seq", "bigint"),
    Column("customer_id", "text"),
    Column("kind", "text"),
    Column("amount_baisa", "bigint"),
    Column("balance_delta_baisa", "bigint"),
    Column("reason", "text"),
    Column("order_id", "text"),
    Column("code", "text"),
    Column("redemption_id", "text"),
    Column("balance_after_baisa", "bigint"),
    Column("reserved_after_baisa", "bigint"),
    Column("created_at", "timestamptz"),
)
ORDERS = Table(
    "orders",
    Column("order_id", "text"),
    Column("customer_id", "text"),
    Column("tenant_id", "text"),
    Column("plan_id", "text"),
    Column("apps", "jsonb"),
    Column("addons", "jsonb"),
    Column("lines", "jsonb"),
    Column("promo_code", "text"),
    Column("total_baisa", "bigint"),
    Column("credit_applied_baisa", "bigint", updated=True),
    Column("amount_due_baisa", "bigint", updated=True),
    Column("amount_paid_baisa", "bigint", updated=True),
    Column("paid_by_credit", "boolean", updated=True),
    Column("status", "text", updated=True),
    Column("stripe_session_id", "text", updated=True),
    Column("session_url", "text", updated=True),
    Column("redemption_id", "text", updated=True),
    Column("failure_reason", "text", updated=True),
    Column("failure_message", "text", updated=True),
    Column("release_slot", "boolean", updated=True),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
    Column("user_id", "text"),
    Column("member_by_claim", "boolean"),
    Column("owns", "boolean", updated=True),
    Column("discount_baisa", "bigint"),  # issue #21: off total_baisa, before credit
    Column("discount_code", "text"),
)

CREDIT_LOTS = Table(
    "credit_lots",
    Column("redemption_id", "text"),
    Column("customer_id", "text"),
    Column("code", "text"),
    Column("order_id", "text"),
    Column("granted_baisa", "bigint"),
    Column("left_baisa", "bigint", updated=True),
    Column("expires_at", "timestamptz"),
    Column("last_seq", "bigint", updated=True),
)

# Where a field sits in a row (a list in its table's column order), read once.
_W = WALLETS.index
_W_BALANCE, _W_RESERVED = _W["balance_baisa"], _W["reserved_baisa"]
_W_UPDATED, _W_SEQ = _W["updated_at"], _W["last_seq"]
_O = ORDERS.index
_O_TOTAL, _O_APPLIED, _O_DUE = _O["total_baisa"], _O["credit_applied_baisa"], _O["amount_due_baisa"]
_O_PAID, _O_BY_CREDIT, _O_STATUS = _O["amount_paid_baisa"], _O["paid_by_credit"], _O["status"]
_O_SESSION, _O_URL = _O["stripe_session_id"], _O["session_url"]
_O_REDEMPTION, _O_REASON = _O["redemption_id"], _O["failure_reason"]
_O_MESSAGE, _O_RELEASE = _O["failure_message"], _O["release_slot"]
_O_UPDATED, _O_SEQ = _O["updated_at"], _O["last_seq"]
_O_OWNS, _O_DISCOUNT = _O["owns"], _O["discount_baisa"]
_L_LEFT, _L_SEQ = CREDIT_LOTS.index["left_baisa"], CREDIT_LOTS.index["last_seq"]
_EXPIRED = "wallet.credit_expired"

_GRANTED = "wallet.credit_granted"
_MOVES = frozenset(
    (
        _GRANTED,
        "wallet.grant_revoked",
        "wallet.credit_reserved",
        "wallet.credit_captured",
        "wallet.credit_released",
        _EXPIRED,
    )
)
_ORDER_EVENTS = frozenset(
    (
        "order.opened",
        "order.payment_requested",
        "order.session_created",
        "order.completed",
        "order.failed",
        "order.abandoned",
        "order.refund_due",
    )
)


def _jsonb(value: Any) -> str:
    """JSON text for a jsonb column (pydantic-core's encoder: a tenth of ``json.dumps``'s time;
    PostgreSQL stores the same jsonb value from either text)."""
    return to_json(value).decode()


def _wallet_keys(events: Sequence[PlainEvent]) -> tuple[set[str], set[str], set[str]]:
    """The wallets, orders and credit lots ``events`` (order.placed expanded) touch."""
    customers: set[str] = set()
    order_ids: set[str] = set()
    lot_ids: set[str] = set()
    for item in events:
        event = item.doc["event"]
        kind = event["type"]
        if kind in _MOVES:
            customers.add(item.doc["aggregate_id"])
            if kind == _GRANTED:
                order_ids.add(event["order_id"])
            elif kind == _EXPIRED:
                lot_ids.add(event["redemption_id"])
            else:
                lot_ids.update(share["redemption_id"] for share in event.get("lots") or ())
        elif kind in _ORDER_EVENTS:
            order_ids.add(event["order_id"])
    return customers, order_ids, lot_ids


class WalletProjection:
    """``wallets``, ``credit_entries`` and ``orders``."""

    name = "wallets"
    tables = (WALLETS.name, CREDIT_ENTRIES.name, ORDERS.name, CREDIT_LOTS.name)
    keyed = frozenset((WALLETS.name, ORDERS.name, CREDIT_LOTS.name))

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]:
        """The reads :meth:`apply` will make (projections/prefetch.py)."""
        customers, order_ids, lot_ids = _wallet_keys(expand_placed(events))
        return [
            (WALLETS.select, customers),
            (ORDERS.select, order_ids),
            (CREDIT_LOTS.select, lot_ids),
        ]

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        events = expand_placed(events)  # order.placed: its parts, one by one
        customers, order_ids, lot_ids = _wallet_keys(events)
        if not customers and not order_ids:
            return
        wallets: dict[str, list[Any]] = {}
        if customers:
            wallets = {
                r["customer_id"]: list(r) for r in await conn.fetch(WALLETS.select, list(customers))
            }
        orders: dict[str, list[Any]] = {}
        if order_ids:
            orders = {
                r["order_id"]: list(r) for r in await conn.fetch(ORDERS.select, list(order_ids))
            }
        lots: dict[str, list[Any]] = {}
        if lot_ids:
            lots = {
                r["redemption_id"]: list(r)
                for r in await conn.fetch(CREDIT_LOTS.select, list(lot_ids))
            }
        lots_existed = set(lots)
        wallets_existed = set(wallets)
        orders_existed = set(orders)

        def shift(item: PlainEvent, shares: list[dict[str, Any]], sign: int) -> None:
            for share in shares:
                lot = lots.get(share["redemption_id"])
                if lot is not None:
                    lot[_L_LEFT] += sign * share["amount_baisa"]
                    lot[_L_SEQ] = item.seq

        entries: list[tuple[Any, ...]] = []

        def move(
            item: PlainEvent,
            kind: str,
            amount: int,
            delta: int,
            hold: int,
            reason: str,
            order_id: str | None,
            code: str | None = None,
            redemption_id: str | None = None,
        ) -> None:
            env = item.doc
            customer = env["aggregate_id"]
            at = env["occurred_at"]
            row = wallets.get(customer)
            if row is None:
                # a wallet's first movement: the row one INSERT of the movement would make
                balance = max(delta, 0)
                row = WALLETS.new_row(
                    customer_id=customer,
                    balance_baisa=balance,
                    reserved_baisa=min(max(hold, 0), balance),
                    updated_at=at,
                    last_seq=item.seq,
                )
                wallets[customer] = row
            else:
                row[_W_BALANCE] += delta
                row[_W_RESERVED] += hold
                row[_W_UPDATED], row[_W_SEQ] = at, item.seq
            balance, reserved = row[_W_BALANCE], row[_W_RESERVED]
            if balance < 0 or reserved < 0 or reserved > balance:
                raise asyncpg.CheckViolationError(
                    f"wallet {customer!r} would hold balance {balance}, reserved {reserved} "
                    f"after seq {item.seq} (the update violates the wallets CHECKs)"
                )
            entries.append(
                (  # in CREDIT_ENTRIES column order (the hot path: one entry per movement)
                    item.seq,
                    customer,
                    kind,
                    amount,
                    delta,
                    reason,
                    order_id,
                    code,
                    redemption_id,
                    balance,
                    reserved,
                    at,
                )
            )

        for item in events:
            env = item.doc
            event = env["event"]
            kind = event["type"]
            if kind in _MOVES:
                amount = event["amount_baisa"]
                order_id = event["order_id"]
                if kind == _GRANTED:
                    code, redemption_id = event["code"], event["redemption_id"]
                    move(
                        item,
                        "granted",
                        amount,
                        amount,
                        0,
                        f"promo:{code}",
                        order_id,
                        code,
                        redemption_id,
                    )
                    if event["expires_at"] is not None:
                        lots[redemption_id] = CREDIT_LOTS.new_row(
                            redemption_id=redemption_id,
                            customer_id=env["aggregate_id"],
                            code=code,
                            order_id=order_id,
                            granted_baisa=amount,
                            left_baisa=amount,
                            expires_at=event["expires_at"],
                            last_seq=item.seq,
                        )
                    order = orders.get(order_id)
                    if order is not None:
                        order[_O_REDEMPTION] = redemption_id
                        order[_O_UPDATED], order[_O_SEQ] = env["occurred_at"], item.seq
                elif kind == "wallet.grant_revoked":
                    code = event["code"]
                    move(
                        item,
                        "revoked",
                        amount,
                        -amount,
                        0,
                        f"promo-reversed:{code}",
                        order_id,
                        code,
                        event["redemption_id"],
                    )
                    shift(item, event["lots"], -1)
                elif kind == "wallet.credit_reserved":
                    move(item, "reserved", amount, 0, amount, "order-reservation", order_id)
                    shift(item, event["lots"], -1)
                elif kind == "wallet.credit_captured":
                    move(item, "captured", amount, -amount, -amount, "order-payment", order_id)
                elif kind == _EXPIRED:
                    rid = event["redemption_id"]
                    move(
                        item,
                        "expired",
                        amount,
                        -amount,
                        0,
                        "credit-expired",
                        order_id,
                        event["code"],
                        rid,
                    )
                    shift(item, [{"redemption_id": rid, "amount_baisa": amount}], -1)
                else:  # wallet.credit_released
                    move(
                        item,
                        "released",
                        amount,
                        0,
                        -amount,
                        f"order-release:{event['reason']}",
                        order_id,
                    )
                    shift(item, event["lots"], 1)
            elif kind in _ORDER_EVENTS:
                _order(orders, item, kind, event)

        created_wallets = [tuple(r) for c, r in wallets.items() if c not in wallets_existed]
        changed_wallets = [r for c, r in wallets.items() if c in wallets_existed]
        if created_wallets:
            await conn.copy_records_to_table(
                WALLETS.name, columns=WALLETS.names, records=created_wallets
            )
        if changed_wallets:
            await conn.execute(WALLETS.update, *WALLETS.update_args(changed_wallets))
        if entries:
            await conn.copy_records_to_table(
                CREDIT_ENTRIES.name, columns=CREDIT_ENTRIES.names, records=entries
            )
        created_lots = [tuple(r) for k, r in lots.items() if k not in lots_existed]
        changed_lots = [r for k, r in lots.items() if k in lots_existed]
        if created_lots:
            await conn.copy_records_to_table(
                CREDIT_LOTS.name, columns=CREDIT_LOTS.names, records=created_lots
            )
        if changed_lots:
            await conn.execute(CREDIT_LOTS.update, *CREDIT_LOTS.update_args(changed_lots))
        created_orders = [tuple(r) for o, r in orders.items() if o not in orders_existed]
        changed_orders = [r for o, r in orders.items() if o in orders_existed]
        if created_orders:
            await conn.copy_records_to_table(
                ORDERS.name, columns=ORDERS.names, records=created_orders
            )
        if changed_orders:
            await conn.execute(ORDERS.update, *ORDERS.update_args(changed_orders))


def _order(
    orders: dict[str, list[Any]], item: PlainEvent, kind: str, event: dict[str, Any]
) -> None:
    """One order event on the order rows."""
    at = item.doc["occurred_at"]
    seq = item.seq
    order_id = event["order_id"]
    if kind == "order.opened":
        if order_id in orders:
            raise asyncpg.UniqueViolationError(f"order {order_id!r} opened twice (orders_pkey)")
        orders[order_id] = ORDERS.new_row(
            order_id=order_id,
            customer_id=item.doc["aggregate_id"],
            tenant_id=event["tenant_id"],
            plan_id=event["plan_id"],
            apps=_jsonb(event["apps"]),
            addons=_jsonb(event["addons"]),
            lines=_jsonb(event["lines"]),
            promo_code=event["promo_code"],
            total_baisa=event["total_baisa"],
            credit_applied_baisa=0,
            amount_due_baisa=event["total_baisa"] - event["discount_baisa"],
            amount_paid_baisa=0,
            paid_by_credit=False,
            status="opened",
            stripe_session_id=None,
            session_url=None,
            redemption_id=None,
            failure_reason=None,
            failure_message=None,
            release_slot=False,
            created_at=at,
            updated_at=at,
            last_seq=seq,
            user_id=event["user_id"],
            member_by_claim=event["member_by_claim"],
            owns=not event["member_by_claim"],
            discount_baisa=event["discount_baisa"],
            discount_code=event["discount_code"],
        )
        return
    order = orders.get(order_id)
    if order is None:
        return  # an UPDATE of the order would find no row
    if kind == "order.payment_requested":
        order[_O_STATUS] = "awaiting_payment"
        order[_O_APPLIED] = event["credit_applied_baisa"]
        order[_O_DUE] = event["amount_due_baisa"]
    elif kind == "order.session_created":
        order[_O_SESSION] = event["session_id"]
        order[_O_URL] = event["session_url"]
    elif kind == "order.completed":
        order[_O_STATUS] = "completed"
        order[_O_BY_CREDIT] = event["paid_by_credit"]
        order[_O_APPLIED] = event["credit_applied_baisa"]
        order[_O_DUE] = order[_O_TOTAL] - order[_O_DISCOUNT] - event["credit_applied_baisa"]
        order[_O_PAID] = event["amount_paid_baisa"]
        if event["stripe_session_id"] is not None:
            order[_O_SESSION] = event["stripe_session_id"]
    elif kind == "order.failed":
        order[_O_STATUS] = "failed"
        order[_O_OWNS] = False  # a refused checkout makes nobody the owner
        order[_O_REASON] = event["reason"]
        order[_O_MESSAGE] = event["message"]
        order[_O_RELEASE] = event["release_slot"]
    elif kind == "order.abandoned":
        order[_O_STATUS] = "abandoned"
        order[_O_REASON] = event["reason"]
    else:  # order.refund_due
        order[_O_STATUS] = "refund_due"
        order[_O_PAID] = event["amount_paid_baisa"]
        order[_O_SESSION] = event["stripe_session_id"]
    order[_O_UPDATED], order[_O_SEQ] = at, seq
