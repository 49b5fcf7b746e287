"""The ``billing`` read model: ``subscriptions``, ``invoices`` (and ``subscription_orders``,
what each order's ``order.opened`` said, since its completion names the order only).

* A completed order starts its Organization's (``tenant_id``'s) subscription, or changes it:
  plan, price per month (the order's total), the customer who ordered, and a new period of
  one calendar month from the completion. Orders that fail or are abandoned change nothing.
* ``invoice.recorded``: one invoice row per Stripe invoice (paid, or ``open`` while its payment
  has failed); the Organization's subscription turns ``past_due`` on a failure and ``active``
  on a payment, and learns the Stripe customer (what the billing portal opens).

Folded in memory per batch like the other read models (``model``): touched rows read first, new
ones written with ``COPY``, changed ones with one ``UPDATE`` per table.
"""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from voucher_ledger.ledger.ids import uuid5_text
from voucher_ledger.projections.model import Column, Conn, PlainEvent, Table, expand_placed
from voucher_ledger.projections.prefetch import Want

SUBSCRIPTION_ORDERS = Table(
    "subscription_orders",
    Column("order_id", "text"),
    Column("customer_id", "text"),
    Column("tenant_id", "text"),
    Column("plan_id", "text"),
    Column("total_baisa", "bigint"),
)
SUBSCRIPTIONS = Table(
    "subscriptions",
    Column("tenant_id", "text"),
    Column("id", "text"),
    Column("customer_id", "text", updated=True),
    Column("plan_id", "text", updated=True),
    Column("status", "text", updated=True),
    Column("amount_baisa", "bigint", updated=True),
    Column("order_id", "text", updated=True),
    Column("stripe_customer_id", "text", updated=True),
    Column("current_period_start", "timestamptz", updated=True),
    Column("current_period_end", "timestamptz", updated=True),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
)
INVOICES = Table(
    "invoices",
    Column("stripe_invoice_id", "text"),
    Column("id", "text"),
    Column("customer_id", "text"),
    Column("tenant_id", "text"),
    Column("stripe_customer_id", "text", updated=True),
    Column("amount_baisa", "bigint", updated=True),
    Column("currency", "text"),
    Column("status", "text", updated=True),
    Column("period_start", "timestamptz", updated=True),
    Column("period_end", "timestamptz", updated=True),
    Column("pdf_url", "text", updated=True),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
)

_S = SUBSCRIPTIONS.index
_I = INVOICES.index
_NS = uuid.UUID("5d3c1a52-9f0e-4c43-8e0b-2f6a7d1c9e44")
_OPENED, _COMPLETED, _INVOICE = "order.opened", "order.completed", "invoice.recorded"
INVOICE_STATUS = {"paid": "paid", "payment_failed": "open"}


def subscription_id(tenant_id: str) -> str:
    """The subscription's id in the API (the seed's uuid): one per Organization."""
    return uuid5_text(_NS, f"subscription\x00{tenant_id}")


def invoice_id(stripe_invoice_id: str) -> str:
    return uuid5_text(_NS, f"invoice\x00{stripe_invoice_id}")


def one_month_after(at: datetime) -> datetime:
    """The same day and time a calendar month later (the month's last day when it is
    shorter: 31 January -> 28 or 29 February)."""
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


def _billing_keys(
    events: Sequence[PlainEvent],
) -> tuple[set[str], set[str], set[str], set[str]]:
    """Of ``events`` (order.placed expanded): the orders completed, the tenants of invoices,
    the invoices, and the tenants of the orders opened."""
    completed: set[str] = set()
    tenants: set[str] = set()
    invoice_ids: set[str] = set()
    opened: set[str] = set()
    for item in events:
        event = item.doc["event"]
        kind = event["type"]
        if kind == _COMPLETED:
            completed.add(event["order_id"])
        elif kind == _OPENED:
            opened.add(event["tenant_id"])
        elif kind == _INVOICE:
            tenants.add(event["tenant_id"])
            invoice_ids.add(event["stripe_invoice_id"])
    return completed, tenants, invoice_ids, opened


class BillingProjection:
    """``subscriptions``, ``invoices`` and ``subscription_orders``."""

    name = "billing"
    tables = (SUBSCRIPTION_ORDERS.name, SUBSCRIPTIONS.name, INVOICES.name)
    keyed = frozenset(tables)

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]:
        """The reads :meth:`apply` will make (projections/prefetch.py); the subscriptions of
        the tenants whose orders open in the batch (those completed here usually are)."""
        completed, tenants, invoice_ids, opened = _billing_keys(expand_placed(events))
        return [
            (SUBSCRIPTION_ORDERS.select, completed),
            (SUBSCRIPTIONS.select, tenants | opened),
            (INVOICES.select, invoice_ids),
        ]

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        events = expand_placed(events)  # order.placed: its parts, one by one
        completed, tenants, invoice_ids, opened = _billing_keys(events)
        if not completed and not invoice_ids and not opened:
            return
        orders: dict[str, tuple[Any, ...]] = {}
        if completed:
            orders = {
                r["order_id"]: tuple(r)
                for r in await conn.fetch(SUBSCRIPTION_ORDERS.select, list(completed))
            }
        new_orders: list[tuple[Any, ...]] = []
        for item in events:  # the tenants of the orders completed here, opened before or here
            event = item.doc["event"]
            if event["type"] == _OPENED and event["order_id"] not in orders:
                row = tuple(
                    SUBSCRIPTION_ORDERS.new_row(
                        order_id=event["order_id"],
                        customer_id=event["user_id"],  # the login that ordered
                        tenant_id=event["tenant_id"],
                        plan_id=event["plan_id"],
                        total_baisa=event["total_baisa"],
                    )
                )
                orders[event["order_id"]] = row
                new_orders.append(row)
        oi = SUBSCRIPTION_ORDERS.index
        tenants.update(orders[o][oi["tenant_id"]] for o in completed if o in orders)
        subscriptions: dict[str, list[Any]] = {}
        if tenants:
            subscriptions = {
                r["tenant_id"]: list(r)
                for r in await conn.fetch(SUBSCRIPTIONS.select, list(tenants))
            }
        invoices: dict[str, list[Any]] = {}
        if invoice_ids:
            invoices = {
                r["stripe_invoice_id"]: list(r)
                for r in await conn.fetch(INVOICES.select, list(invoice_ids))
            }
        subscriptions_existed, invoices_existed = set(subscriptions), set(invoices)

        for item in events:
            event = item.doc["event"]
            kind = event["type"]
            at, seq = item.doc["occurred_at"], item.seq
            if kind == _COMPLETED:
                order = orders.get(event["order_id"])
                if order is None:
                    continue  # an order opened before this read model existed
                tenant = order[oi["tenant_id"]]
                sub = subscriptions.get(tenant)
                if sub is None:
                    sub = subscriptions[tenant] = SUBSCRIPTIONS.new_row(
                        tenant_id=tenant,
                        id=subscription_id(tenant),
                        customer_id="",
                        plan_id="",
                        status="active",
                        amount_baisa=0,
                        order_id="",
                        stripe_customer_id=None,
                        current_period_start=at,
                        current_period_end=at,
                        created_at=at,
                        updated_at=at,
                        last_seq=seq,
                    )
                sub[_S["customer_id"]] = order[oi["customer_id"]]
                sub[_S["plan_id"]] = order[oi["plan_id"]]
                sub[_S["amount_baisa"]] = order[oi["total_baisa"]]
                sub[_S["order_id"]] = event["order_id"]
                sub[_S["status"]] = "active"
                sub[_S["current_period_start"]] = at
                sub[_S["current_period_end"]] = one_month_after(at)
                sub[_S["updated_at"]], sub[_S["last_seq"]] = at, seq
            elif kind == _INVOICE:
                _invoice(invoices, subscriptions, item, event)

        if new_orders:
            await conn.copy_records_to_table(
                SUBSCRIPTION_ORDERS.name, columns=SUBSCRIPTION_ORDERS.names, records=new_orders
            )
        for table, rows, existed in (
            (SUBSCRIPTIONS, subscriptions, subscriptions_existed),
            (INVOICES, invoices, invoices_existed),
        ):
            created = [tuple(r) for k, r in rows.items() if k not in existed]
            changed = [r for k, r in rows.items() if k in existed]
            if created:
                await conn.copy_records_to_table(table.name, columns=table.names, records=created)
            if changed:
                await conn.execute(table.update, *table.update_args(changed))


def _invoice(
    invoices: dict[str, list[Any]],
    subscriptions: dict[str, list[Any]],
    item: PlainEvent,
    event: dict[str, Any],
) -> None:
    at, seq = item.doc["occurred_at"], item.seq
    stripe_id = event["stripe_invoice_id"]
    status = INVOICE_STATUS[event["outcome"]]
    row = invoices.get(stripe_id)
    if row is None:
        row = invoices[stripe_id] = INVOICES.new_row(
            stripe_invoice_id=stripe_id,
            id=invoice_id(stripe_id),
            customer_id=event.get("user_id") or item.doc["aggregate_id"],
            tenant_id=event["tenant_id"],
            stripe_customer_id=None,
            amount_baisa=0,
            currency=event["currency"],
            status=status,
            period_start=None,
            period_end=None,
            pdf_url=None,
            created_at=at,
            updated_at=at,
            last_seq=seq,
        )
    row[_I["stripe_customer_id"]] = event["stripe_customer_id"] or row[_I["stripe_customer_id"]]
    row[_I["amount_baisa"]] = event["amount_baisa"]
    row[_I["status"]] = status
    row[_I["period_start"]] = event["period_start"]
    row[_I["period_end"]] = event["period_end"]
    row[_I["pdf_url"]] = event["pdf_url"]
    row[_I["updated_at"]], row[_I["last_seq"]] = at, seq
    sub = subscriptions.get(event["tenant_id"])
    if sub is not None:
        sub[_S["status"]] = "active" if event["outcome"] == "paid" else "past_due"
        if event["stripe_customer_id"]:
            sub[_S["stripe_customer_id"]] = event["stripe_customer_id"]
        sub[_S["updated_at"]], sub[_S["last_seq"]] = at, seq
