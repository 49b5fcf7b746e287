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

The live projector applies its batches with these too (``projector.Projector``, when every
projection it runs has a bulk applier); ``Projection.apply`` is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import asyncpg
from pydantic_core import to_json

from voucher_ledger.ledger.events import decode_plain
from voucher_ledger.projections.projector import (
    AUDIT_COLUMNS,
    AuditProjection,
    Conn,
    Projection,
    VoucherProjection,
)
from voucher_ledger.projections.wallets import WalletProjection


class PlainEvent(NamedTuple):
    """An event as the bulk appliers read it: ``doc`` is ``decode_plain``'s envelope (plain
    dicts, validated as the models are), ``raw`` the message body exactly as stored. (A named
    tuple: a frozen dataclass's ``__init__`` cost a microsecond per event.)"""

    seq: int
    doc: dict[str, Any]
    raw: str


def plain_event(seq: int, data: bytes) -> PlainEvent:
    return PlainEvent(seq, decode_plain(data), data.decode())


class BulkProjection(Protocol):
    # The tables whose primary key the applier's statements look rows up by: a rebuild keeps
    # those keys while loading and builds every other key, unique index and foreign key of
    # the projection's tables after the load (bench/README.md, "Rebuild").
    keyed: frozenset[str]

    async def apply_bulk(self, conn: Conn, events: Sequence[PlainEvent]) -> None: ...


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


_ISSUED, _REVOKED, _REDEEMED, _REVERSED = (
    "voucher.issued",
    "voucher.revoked",
    "voucher.redeemed",
    "voucher.redemption_reversed",
)
_VOUCHER_EVENTS = frozenset((_ISSUED, _REVOKED, _REDEEMED, _REVERSED))


class VoucherBulk:
    """``vouchers`` and ``redemptions``, as ``VoucherProjection.apply`` leaves them."""

    keyed = frozenset(("vouchers", "redemptions"))

    async def apply_bulk(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        codes: set[str] = set()
        for item in events:
            event = item.doc["event"]
            if event["type"] in _VOUCHER_EVENTS:
                codes.add(event["code"])
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
            env = item.doc
            event = env["event"]
            kind = event["type"]
            if kind not in _VOUCHER_EVENTS:
                continue
            at = env["occurred_at"]
            seq = item.seq
            code = event["code"]
            if kind == _REDEEMED:
                row = rows.get(code)
                if row is None:
                    raise _foreign_key_error(code)
                redemption_id = event["redemption_id"]
                redemption = [
                    redemption_id,
                    code,
                    event["customer_id"],
                    event["credit_baisa"],
                    at,
                    seq,
                    env["command_id"],
                    None,
                    None,
                    None,
                ]
                pair = (code, event["customer_id"])
                if redemption_id in by_id or pair in active:
                    raise asyncpg.UniqueViolationError(
                        f"redemption {redemption_id!r} of {pair} recorded twice "
                        "(the live insert violates a unique index of redemptions)"
                    )
                active.add(pair)
                new.append(redemption)
                by_id[redemption_id] = redemption
                row[_V_TIMES] += 1
                row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif kind == _ISSUED:
                row = rows.get(code)
                if row is None:
                    rows[code] = [
                        code,
                        event["credit_baisa"],
                        event["description"],
                        event["active"],
                        False,
                        event["max_redemptions"],
                        0,
                        at,
                        at,
                        None,
                        seq,
                    ]
                else:
                    row[_V_CREDIT] = event["credit_baisa"]
                    row[_V_DESC] = event["description"]
                    row[_V_ACTIVE] = event["active"]
                    row[_V_MAX] = event["max_redemptions"]
                    row[_V_REVOKED], row[_V_REVOKED_AT] = False, None
                    row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif kind == _REVOKED:
                row = rows.get(code)
                if row is not None:
                    row[_V_REVOKED], row[_V_ACTIVE], row[_V_REVOKED_AT] = True, False, at
                    row[_V_UPDATED], row[_V_SEQ] = at, seq
            else:  # _REVERSED
                redemption_id = event["redemption_id"]
                found = by_id.get(redemption_id)
                if found is not None:
                    if found[_R_REVERSED_AT] is None:
                        found[7:10] = [at, seq, event["reason"]]
                        active.discard((found[1], found[2]))
                elif redemption_id not in earlier:
                    earlier[redemption_id] = (at, seq, event["reason"])
                row = rows.get(code)
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

_GRANTED = "wallet.credit_granted"
_MOVES = frozenset(
    (
        _GRANTED,
        "wallet.grant_revoked",
        "wallet.credit_reserved",
        "wallet.credit_captured",
        "wallet.credit_released",
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


class WalletBulk:
    """``wallets``, ``credit_entries`` and ``orders``, as ``WalletProjection.apply`` leaves
    them."""

    keyed = frozenset(("wallets", "orders"))

    async def apply_bulk(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        customers: set[str] = set()
        order_ids: set[str] = set()
        for item in events:
            event = item.doc["event"]
            kind = event["type"]
            if kind in _MOVES:
                customers.add(item.doc["aggregate_id"])
                if kind == _GRANTED:
                    order_ids.add(event["order_id"])
            elif kind in _ORDER_EVENTS:
                order_ids.add(event["order_id"])
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
                elif kind == "wallet.credit_reserved":
                    move(item, "reserved", amount, 0, amount, "order-reservation", order_id)
                elif kind == "wallet.credit_captured":
                    move(item, "captured", amount, -amount, -amount, "order-payment", order_id)
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
            elif kind in _ORDER_EVENTS:
                self._order(orders, item, kind, event)

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

    @staticmethod
    def _order(
        orders: dict[str, list[Any]], item: PlainEvent, kind: str, event: dict[str, Any]
    ) -> None:
        """One order event on the order rows, as the live statements change them."""
        at = item.doc["occurred_at"]
        seq = item.seq
        order_id = event["order_id"]
        if kind == "order.opened":
            if order_id in orders:
                raise asyncpg.UniqueViolationError(f"order {order_id!r} opened twice (orders_pkey)")
            orders[order_id] = [
                order_id,
                item.doc["aggregate_id"],
                event["tenant_id"],
                event["plan_id"],
                _jsonb(event["apps"]),
                _jsonb(event["addons"]),
                _jsonb(event["lines"]),
                event["promo_code"],
                event["total_baisa"],
                0,
                event["total_baisa"],
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
            return
        order = orders.get(order_id)
        if order is None:
            return  # the live UPDATE finds no row
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
            order[_O_DUE] = order[_O_TOTAL] - event["credit_applied_baisa"]
            order[_O_PAID] = event["amount_paid_baisa"]
            if event["stripe_session_id"] is not None:
                order[_O_SESSION] = event["stripe_session_id"]
        elif kind == "order.failed":
            order[_O_STATUS] = "failed"
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


# --------------------------------------------------------------------------------------- audit


class AuditBulk:
    """``audit_log``: every event verbatim, with one COPY per batch as ``AuditProjection``."""

    keyed: frozenset[str] = frozenset()

    async def apply_bulk(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        records = []
        for e in events:
            doc = e.doc
            event = doc["event"]
            actor = doc["actor"]
            records.append(
                (
                    e.seq,
                    doc["event_id"],
                    event["type"],
                    event["version"],
                    doc["aggregate"],
                    doc["aggregate_id"],
                    actor["sub"],
                    actor["role"],
                    doc["command_id"],
                    doc["occurred_at"],
                    e.raw,
                )
            )
        await conn.copy_records_to_table("audit_log", columns=AUDIT_COLUMNS, records=records)


_BULK: dict[type, BulkProjection] = {
    VoucherProjection: VoucherBulk(),
    WalletProjection: WalletBulk(),
    AuditProjection: AuditBulk(),
}


def bulk_for(projection: Projection) -> BulkProjection | None:
    """The bulk applier of ``projection`` (exactly one of the service's projection classes, not
    a subclass that may apply differently), or None: then the rebuild uses its ``apply``."""
    return _BULK.get(type(projection))
