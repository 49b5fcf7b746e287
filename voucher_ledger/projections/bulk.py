"""Bulk application of a batch of events, for rebuilds: the same rows as ``Projection.apply``
with a handful of statements per batch instead of about one per event.

Each batch's events are folded in memory, row by row, exactly as the live statements would
change the rows one event after another: the rows a batch touches that already exist (from an
earlier batch) are read first, rows created by the batch are written once with ``COPY``, rows
that existed are written once with one ``UPDATE … FROM unnest(…)`` per table, and insert-only
rows (redemptions, credit entries, the audit trail) go in with ``COPY``. Table names are
unqualified: the rebuild sets ``search_path`` to its shadow schema.

A stream the live statements would refuse (a redemption of a code never issued, an order opened
twice, a credit movement that would make a wallet negative) is refused here too, with the same
kind of error; the CHECK and UNIQUE constraints of the tables still guard every row written.

The live projectors do not use this module: ``Projection.apply`` is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from voucher_ledger.ledger.events import (
    CreditCaptured,
    CreditGranted,
    CreditReleased,
    CreditReserved,
    GrantRevoked,
    OrderAbandoned,
    OrderCompleted,
    OrderFailed,
    OrderOpened,
    OrderPaymentRequested,
    OrderRefundDue,
    OrderSessionCreated,
    RedemptionReversed,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
)
from voucher_ledger.projections.projector import (
    AuditProjection,
    Conn,
    Projection,
    StreamEvent,
    VoucherProjection,
)
from voucher_ledger.projections.wallets import WalletProjection


class BulkProjection(Protocol):
    async def apply_bulk(self, conn: Conn, events: Sequence[StreamEvent]) -> None: ...


# ------------------------------------------------------------------------------------ vouchers

_VOUCHER_COLUMNS = (
    "code",
    "credit_baisa",
    "description",
    "active",
    "revoked",
    "max_redemptions",
    "times_redeemed",
    "created_at",
    "updated_at",
    "revoked_at",
    "last_seq",
)
# indexes into a voucher row (a list, in _VOUCHER_COLUMNS order)
_V_CREDIT, _V_DESC, _V_ACTIVE, _V_REVOKED, _V_MAX, _V_TIMES = 1, 2, 3, 4, 5, 6
_V_UPDATED, _V_REVOKED_AT, _V_SEQ = 8, 9, 10

_REDEMPTION_COLUMNS = (
    "redemption_id",
    "code",
    "customer_id",
    "credit_baisa",
    "redeemed_at",
    "seq",
    "command_id",
    "reversed_at",
    "reversed_seq",
    "reversal_reason",
)
_R_REVERSED_AT = 7

_VOUCHERS_UPDATE = """
UPDATE vouchers SET credit_baisa = d.credit_baisa, description = d.description,
                    active = d.active, revoked = d.revoked, max_redemptions = d.max_redemptions,
                    times_redeemed = d.times_redeemed, updated_at = d.updated_at,
                    revoked_at = d.revoked_at, last_seq = d.last_seq
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bool[], $5::bool[], $6::int[], $7::int[],
            $8::timestamptz[], $9::timestamptz[], $10::bigint[])
     AS d(code, credit_baisa, description, active, revoked, max_redemptions, times_redeemed,
          updated_at, revoked_at, last_seq)
WHERE vouchers.code = d.code
"""
_REVERSALS_UPDATE = """
UPDATE redemptions SET reversed_at = d.at, reversed_seq = d.seq, reversal_reason = d.reason
FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::text[]) AS d(id, at, seq, reason)
WHERE redemptions.redemption_id = d.id AND redemptions.reversed_at IS NULL
"""


def _foreign_key_error(code: str) -> asyncpg.ForeignKeyViolationError:
    return asyncpg.ForeignKeyViolationError(
        f"redemption of voucher {code!r}, which has no row (the live projection's insert "
        "would violate redemptions_code_fkey)"
    )


_VOUCHER_EVENTS = (VoucherIssued, VoucherRevoked, VoucherRedeemed, RedemptionReversed)


class VoucherBulk:
    """``vouchers`` and ``redemptions``, as ``VoucherProjection.apply`` leaves them."""

    async def apply_bulk(self, conn: Conn, events: Sequence[StreamEvent]) -> None:
        codes: set[str] = set()
        for item in events:
            event = item.envelope.event
            if isinstance(event, _VOUCHER_EVENTS):
                codes.add(event.code)
        if not codes:
            return
        rows: dict[str, list[Any]] = {
            r["code"]: list(r)
            for r in await conn.fetch(
                f"SELECT {', '.join(_VOUCHER_COLUMNS)} FROM vouchers "  # noqa: S608
                "WHERE code = ANY($1::text[])",
                list(codes),
            )
        }
        existed = set(rows)
        new: list[list[Any]] = []  # redemptions inserted by this batch, in stream order
        by_id: dict[str, list[Any]] = {}
        active: set[tuple[str, str]] = set()  # (code, customer) of this batch's live redemptions
        # reversals of redemptions from earlier batches: id -> (at, seq, reason), first wins
        earlier: dict[str, tuple[datetime, int, str]] = {}

        for item in events:
            env = item.envelope
            event = env.event
            at = env.occurred_at
            seq = item.seq
            if isinstance(event, VoucherRedeemed):
                row = rows.get(event.code)
                if row is None:
                    raise _foreign_key_error(event.code)
                redemption = [
                    event.redemption_id,
                    event.code,
                    event.customer_id,
                    event.credit_baisa,
                    at,
                    seq,
                    env.command_id,
                    None,
                    None,
                    None,
                ]
                pair = (event.code, event.customer_id)
                if event.redemption_id in by_id or pair in active:
                    raise asyncpg.UniqueViolationError(
                        f"redemption {event.redemption_id!r} of {pair} recorded twice "
                        "(the live insert violates a unique index of redemptions)"
                    )
                active.add(pair)
                new.append(redemption)
                by_id[event.redemption_id] = redemption
                row[_V_TIMES] += 1
                row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif isinstance(event, VoucherIssued):
                row = rows.get(event.code)
                if row is None:
                    rows[event.code] = [
                        event.code,
                        event.credit_baisa,
                        event.description,
                        event.active,
                        False,
                        event.max_redemptions,
                        0,
                        at,
                        at,
                        None,
                        seq,
                    ]
                else:
                    row[_V_CREDIT] = event.credit_baisa
                    row[_V_DESC] = event.description
                    row[_V_ACTIVE] = event.active
                    row[_V_MAX] = event.max_redemptions
                    row[_V_REVOKED], row[_V_REVOKED_AT] = False, None
                    row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif isinstance(event, VoucherRevoked):
                row = rows.get(event.code)
                if row is not None:
                    row[_V_REVOKED], row[_V_ACTIVE], row[_V_REVOKED_AT] = True, False, at
                    row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif isinstance(event, RedemptionReversed):
                found = by_id.get(event.redemption_id)
                if found is not None:
                    if found[_R_REVERSED_AT] is None:
                        found[7:10] = [at, seq, event.reason]
                        active.discard((found[1], found[2]))
                elif event.redemption_id not in earlier:
                    earlier[event.redemption_id] = (at, seq, event.reason)
                row = rows.get(event.code)
                if row is not None:
                    row[_V_TIMES] -= 1
                    row[_V_UPDATED], row[_V_SEQ] = at, seq

        created = [tuple(r) for code, r in rows.items() if code not in existed]
        changed = [r for code, r in rows.items() if code in existed]
        if created:
            await conn.copy_records_to_table("vouchers", columns=_VOUCHER_COLUMNS, records=created)
        if changed:
            await conn.execute(
                _VOUCHERS_UPDATE,
                *(
                    [r[i] for r in changed]
                    for i in (0, _V_CREDIT, _V_DESC, _V_ACTIVE, _V_REVOKED, _V_MAX, _V_TIMES)
                ),
                [r[_V_UPDATED] for r in changed],
                [r[_V_REVOKED_AT] for r in changed],
                [r[_V_SEQ] for r in changed],
            )
        # Reversals of earlier rows first: they only ever free a (code, customer) slot that a
        # redemption of this batch may take again.
        if earlier:
            ids = list(earlier)
            await conn.execute(
                _REVERSALS_UPDATE,
                ids,
                [earlier[i][0] for i in ids],
                [earlier[i][1] for i in ids],
                [earlier[i][2] for i in ids],
            )
        if new:
            await conn.copy_records_to_table(
                "redemptions", columns=_REDEMPTION_COLUMNS, records=[tuple(r) for r in new]
            )


# ------------------------------------------------------------------------------------- wallets

_WALLET_COLUMNS = ("customer_id", "balance_baisa", "reserved_baisa", "updated_at", "last_seq")
_ENTRY_COLUMNS = (
    "seq",
    "customer_id",
    "kind",
    "amount_baisa",
    "balance_delta_baisa",
    "reason",
    "order_id",
    "code",
    "redemption_id",
    "balance_after_baisa",
    "reserved_after_baisa",
    "created_at",
)
_ORDER_COLUMNS = (
    "order_id",
    "customer_id",
    "tenant_id",
    "plan_id",
    "apps",
    "addons",
    "lines",
    "promo_code",
    "total_baisa",
    "credit_applied_baisa",
    "amount_due_baisa",
    "amount_paid_baisa",
    "paid_by_credit",
    "status",
    "stripe_session_id",
    "session_url",
    "redemption_id",
    "failure_reason",
    "failure_message",
    "release_slot",
    "created_at",
    "updated_at",
    "last_seq",
)
# indexes into an order row (a list, in _ORDER_COLUMNS order)
_O_TOTAL, _O_APPLIED, _O_DUE, _O_PAID, _O_BY_CREDIT, _O_STATUS = 8, 9, 10, 11, 12, 13
_O_SESSION, _O_URL, _O_REDEMPTION, _O_REASON, _O_MESSAGE, _O_RELEASE = 14, 15, 16, 17, 18, 19
_O_UPDATED, _O_SEQ = 21, 22
_O_MUTABLE = (*range(_O_APPLIED, _O_RELEASE + 1), _O_UPDATED, _O_SEQ)
_O_TYPES = (
    "bigint",
    "bigint",
    "bigint",
    "bool",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "bool",
    "timestamptz",
    "bigint",
)
_ORDERS_UPDATE = (  # constant column names and types only
    "UPDATE orders SET "  # noqa: S608
    + ", ".join(f"{_ORDER_COLUMNS[i]} = d.{_ORDER_COLUMNS[i]}" for i in _O_MUTABLE)
    + " FROM unnest($1::text[], "
    + ", ".join(f"${n + 2}::{t}[]" for n, t in enumerate(_O_TYPES))
    + ") AS d(order_id, "
    + ", ".join(_ORDER_COLUMNS[i] for i in _O_MUTABLE)
    + ") WHERE orders.order_id = d.order_id"
)
_WALLETS_UPDATE = """
UPDATE wallets SET balance_baisa = d.balance, reserved_baisa = d.reserved,
                   updated_at = d.at, last_seq = d.seq
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::bigint[])
     AS d(customer_id, balance, reserved, at, seq)
WHERE wallets.customer_id = d.customer_id
"""

_MOVES = (CreditGranted, GrantRevoked, CreditReserved, CreditCaptured, CreditReleased)
_ORDER_EVENTS = (
    OrderOpened,
    OrderPaymentRequested,
    OrderSessionCreated,
    OrderCompleted,
    OrderFailed,
    OrderAbandoned,
    OrderRefundDue,
)


class WalletBulk:
    """``wallets``, ``credit_entries`` and ``orders``, as ``WalletProjection.apply`` leaves
    them."""

    async def apply_bulk(self, conn: Conn, events: Sequence[StreamEvent]) -> None:
        customers: set[str] = set()
        order_ids: set[str] = set()
        for item in events:
            event = item.envelope.event
            if isinstance(event, _MOVES):
                customers.add(item.envelope.aggregate_id)
                if isinstance(event, CreditGranted):
                    order_ids.add(event.order_id)
            elif isinstance(event, _ORDER_EVENTS):
                order_ids.add(event.order_id)
        if not customers and not order_ids:
            return
        wallets: dict[str, list[Any]] = {}
        if customers:
            wallets = {
                r["customer_id"]: list(r)
                for r in await conn.fetch(
                    f"SELECT {', '.join(_WALLET_COLUMNS)} FROM wallets "  # noqa: S608
                    "WHERE customer_id = ANY($1::text[])",
                    list(customers),
                )
            }
        orders: dict[str, list[Any]] = {}
        if order_ids:
            orders = {
                r["order_id"]: list(r)
                for r in await conn.fetch(
                    f"SELECT {', '.join(_ORDER_COLUMNS)} FROM orders "  # noqa: S608
                    "WHERE order_id = ANY($1::text[])",
                    list(order_ids),
                )
            }
        wallets_existed = set(wallets)
        orders_existed = set(orders)
        entries: list[tuple[Any, ...]] = []

        def move(
            item: StreamEvent,
            kind: str,
            amount: int,
            delta: int,
            hold: int,
            reason: str,
            order_id: str | None,
            code: str | None = None,
            redemption_id: str | None = None,
        ) -> None:
            env = item.envelope
            customer = env.aggregate_id
            at = env.occurred_at
            row = wallets.get(customer)
            if row is None:
                # the live INSERT's candidate row (a wallet's first movement)
                balance = max(delta, 0)
                row = [customer, balance, min(max(hold, 0), balance), at, item.seq]
                wallets[customer] = row
            else:
                row[1] += delta
                row[2] += hold
                row[3], row[4] = at, item.seq
            if row[1] < 0 or row[2] < 0 or row[2] > row[1]:
                raise asyncpg.CheckViolationError(
                    f"wallet {customer!r} would hold balance {row[1]}, reserved {row[2]} after "
                    f"seq {item.seq} (the live projection's update violates the wallets CHECKs)"
                )
            entries.append(
                (
                    item.seq,
                    customer,
                    kind,
                    amount,
                    delta,
                    reason,
                    order_id,
                    code,
                    redemption_id,
                    row[1],
                    row[2],
                    at,
                )
            )

        for item in events:
            env = item.envelope
            event = env.event
            at = env.occurred_at
            seq = item.seq
            match event:
                case CreditGranted():
                    move(
                        item,
                        "granted",
                        event.amount_baisa,
                        event.amount_baisa,
                        0,
                        f"promo:{event.code}",
                        event.order_id,
                        event.code,
                        event.redemption_id,
                    )
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_REDEMPTION] = event.redemption_id
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case GrantRevoked():
                    move(
                        item,
                        "revoked",
                        event.amount_baisa,
                        -event.amount_baisa,
                        0,
                        f"promo-reversed:{event.code}",
                        event.order_id,
                        event.code,
                        event.redemption_id,
                    )
                case CreditReserved():
                    move(
                        item,
                        "reserved",
                        event.amount_baisa,
                        0,
                        event.amount_baisa,
                        "order-reservation",
                        event.order_id,
                    )
                case CreditCaptured():
                    move(
                        item,
                        "captured",
                        event.amount_baisa,
                        -event.amount_baisa,
                        -event.amount_baisa,
                        "order-payment",
                        event.order_id,
                    )
                case CreditReleased():
                    move(
                        item,
                        "released",
                        event.amount_baisa,
                        0,
                        -event.amount_baisa,
                        f"order-release:{event.reason}",
                        event.order_id,
                    )
                case OrderOpened():
                    if event.order_id in orders:
                        raise asyncpg.UniqueViolationError(
                            f"order {event.order_id!r} opened twice (orders_pkey)"
                        )
                    orders[event.order_id] = [
                        event.order_id,
                        env.aggregate_id,
                        event.tenant_id,
                        event.plan_id,
                        json.dumps(event.apps),
                        json.dumps(event.addons),
                        json.dumps([line.model_dump() for line in event.lines]),
                        event.promo_code,
                        event.total_baisa,
                        0,
                        event.total_baisa,
                        0,
                        False,
                        "opened",
                        None,
                        None,
                        None,
                        None,
                        None,
                        False,
                        at,
                        at,
                        seq,
                    ]
                case OrderPaymentRequested():
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_STATUS] = "awaiting_payment"
                        order[_O_APPLIED] = event.credit_applied_baisa
                        order[_O_DUE] = event.amount_due_baisa
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case OrderSessionCreated():
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_SESSION] = event.session_id
                        order[_O_URL] = event.session_url
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case OrderCompleted():
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_STATUS] = "completed"
                        order[_O_BY_CREDIT] = event.paid_by_credit
                        order[_O_APPLIED] = event.credit_applied_baisa
                        order[_O_DUE] = order[_O_TOTAL] - event.credit_applied_baisa
                        order[_O_PAID] = event.amount_paid_baisa
                        if event.stripe_session_id is not None:
                            order[_O_SESSION] = event.stripe_session_id
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case OrderFailed():
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_STATUS] = "failed"
                        order[_O_REASON] = event.reason
                        order[_O_MESSAGE] = event.message
                        order[_O_RELEASE] = event.release_slot
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case OrderAbandoned():
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_STATUS] = "abandoned"
                        order[_O_REASON] = event.reason
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case OrderRefundDue():
                    order = orders.get(event.order_id)
                    if order is not None:
                        order[_O_STATUS] = "refund_due"
                        order[_O_PAID] = event.amount_paid_baisa
                        order[_O_SESSION] = event.stripe_session_id
                        order[_O_UPDATED], order[_O_SEQ] = at, seq
                case _:
                    pass  # voucher events: not this projection's

        created_wallets = [tuple(r) for c, r in wallets.items() if c not in wallets_existed]
        changed_wallets = [r for c, r in wallets.items() if c in wallets_existed]
        if created_wallets:
            await conn.copy_records_to_table(
                "wallets", columns=_WALLET_COLUMNS, records=created_wallets
            )
        if changed_wallets:
            await conn.execute(
                _WALLETS_UPDATE, *([r[i] for r in changed_wallets] for i in range(5))
            )
        if entries:
            await conn.copy_records_to_table(
                "credit_entries", columns=_ENTRY_COLUMNS, records=entries
            )
        created_orders = [tuple(r) for o, r in orders.items() if o not in orders_existed]
        changed_orders = [r for o, r in orders.items() if o in orders_existed]
        if created_orders:
            await conn.copy_records_to_table(
                "orders", columns=_ORDER_COLUMNS, records=created_orders
            )
        if changed_orders:
            await conn.execute(
                _ORDERS_UPDATE,
                [r[0] for r in changed_orders],
                *([r[i] for r in changed_orders] for i in _O_MUTABLE),
            )


# --------------------------------------------------------------------------------------- audit


class AuditBulk:
    """``audit_log``: the live projection already writes it with one COPY per batch."""

    _live = AuditProjection()

    async def apply_bulk(self, conn: Conn, events: Sequence[StreamEvent]) -> None:
        await self._live.apply(conn, events)


_BULK: dict[type, BulkProjection] = {
    VoucherProjection: VoucherBulk(),
    WalletProjection: WalletBulk(),
    AuditProjection: AuditBulk(),
}


def bulk_for(projection: Projection) -> BulkProjection | None:
    """The bulk applier of ``projection`` (exactly one of the service's projection classes, not
    a subclass that may apply differently), or None: then the rebuild uses its ``apply``."""
    return _BULK.get(type(projection))
