"""The ``vouchers`` read model: the ``vouchers`` and ``redemptions`` tables.

A batch is folded in memory (see ``model``): the voucher rows it touches are read first, new
ones go in with ``COPY`` and changed ones with one ``UPDATE``; redemptions are inserted with
``COPY``, and reversals of redemptions of earlier batches set with one ``UPDATE``. A stream
that one statement per event would refuse (a redemption of a code never issued, a redemption
recorded twice) is refused here too, with the same kind of error; the CHECK and UNIQUE
constraints of the tables still guard every row written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic_core import to_json

from voucher_ledger.projections.model import Column, Conn, PlainEvent, Table
from voucher_ledger.projections.prefetch import Want

VOUCHERS = Table(
    "vouchers",
    Column("code", "text"),
    Column("credit_baisa", "bigint", updated=True),
    Column("description", "text", updated=True),
    Column("active", "boolean", updated=True),
    Column("revoked", "boolean", updated=True),
    Column("max_redemptions", "integer", updated=True),
    Column("times_redeemed", "integer", updated=True),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz", updated=True),
    Column("revoked_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
    Column("starts_at", "timestamptz", updated=True),
    Column("expires_at", "timestamptz", updated=True),
    Column("plans", "jsonb", updated=True),
    Column("min_order_baisa", "bigint", updated=True),
    Column("new_organizations_only", "boolean", updated=True),
    Column("credit_valid_for_seconds", "bigint", updated=True),
    Column("discount", "jsonb", updated=True),  # a discount voucher's terms (issue #21)
    # a global code's share on this Sovereign (issue #22); NULL for a voucher of its own
    Column("share_received", "integer", updated=True),
    Column("share_released", "integer", updated=True),
    Column("share_pool_empty", "boolean", updated=True),
)
REDEMPTIONS = Table(
    "redemptions",
    Column("redemption_id", "text"),
    Column("code", "text"),
    Column("customer_id", "text"),
    Column("credit_baisa", "bigint"),
    Column("redeemed_at", "timestamptz"),
    Column("seq", "bigint"),
    Column("command_id", "text"),
    Column("reversed_at", "timestamptz", updated=True),
    Column("reversed_seq", "bigint", updated=True),
    Column("reversal_reason", "text", updated=True),
    Column("user_id", "text"),
    # a reversal of a redemption already reversed changes nothing
    where="redemptions.reversed_at IS NULL",
)

# Where a field sits in a row (a list in its table's column order), read once.
_V = VOUCHERS.index
_V_CREDIT, _V_DESC, _V_ACTIVE = _V["credit_baisa"], _V["description"], _V["active"]
_V_REVOKED, _V_MAX, _V_TIMES = _V["revoked"], _V["max_redemptions"], _V["times_redeemed"]
_V_UPDATED, _V_REVOKED_AT, _V_SEQ = _V["updated_at"], _V["revoked_at"], _V["last_seq"]
_R = REDEMPTIONS.index
_R_ID, _R_CODE, _R_CUSTOMER = _R["redemption_id"], _R["code"], _R["customer_id"]
_R_REVERSED_AT, _R_REVERSED_SEQ = _R["reversed_at"], _R["reversed_seq"]
_R_REASON = _R["reversal_reason"]


_V_SHARE_IN, _V_SHARE_OUT = _V["share_received"], _V["share_released"]
_V_POOL_EMPTY = _V["share_pool_empty"]


def discount_json(terms: dict[str, Any] | None) -> str | None:
    """The ``discount`` jsonb column: a discount voucher's terms, NULL for a credit voucher."""
    return None if terms is None else to_json(terms).decode()


def plans_json(plans: list[str] | None) -> str | None:
    """The ``plans`` jsonb column: a JSON array of plan ids, NULL for any plan."""
    return None if plans is None else to_json(plans).decode()


def terms_columns(event: dict[str, Any]) -> dict[str, Any]:
    """A code's terms as the event that issues it gives them (window, eligibility, expiring
    credit, discount), by column: vouchers, campaigns and global vouchers store them alike."""
    return {
        "starts_at": event["starts_at"],
        "expires_at": event["expires_at"],
        "plans": plans_json(event["plans"]),
        "min_order_baisa": event["min_order_baisa"],
        "new_organizations_only": event["new_organizations_only"],
        "credit_valid_for_seconds": event["credit_valid_for_seconds"],
        "discount": discount_json(event["discount"]),
    }


def _foreign_key_error(code: str) -> asyncpg.ForeignKeyViolationError:
    return asyncpg.ForeignKeyViolationError(
        f"redemption of voucher {code!r}, which has no row (an insert of the redemption "
        "would violate redemptions_code_fkey)"
    )


_ISSUED, _REVOKED, _REDEEMED, _REVERSED = (
    "voucher.issued",
    "voucher.revoked",
    "voucher.redeemed",
    "voucher.redemption_reversed",
)
_SHARE_IN, _SHARE_OUT = "voucher.share_received", "voucher.share_released"
_SHARE_WANTED = "voucher.share_wanted"  # no column: only updated_at and last_seq move
_VOUCHER_EVENTS = frozenset(
    (_ISSUED, _REVOKED, _REDEEMED, _REVERSED, _SHARE_IN, _SHARE_OUT, _SHARE_WANTED)
)


def _codes(events: Sequence[PlainEvent]) -> set[str]:
    return {
        item.doc["event"]["code"] for item in events if item.doc["event"]["type"] in _VOUCHER_EVENTS
    }


class VoucherProjection:
    """``vouchers`` and ``redemptions``."""

    name = "vouchers"
    tables = (VOUCHERS.name, REDEMPTIONS.name)
    keyed = frozenset(tables)

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]:
        """The reads :meth:`apply` will make (projections/prefetch.py)."""
        return [(VOUCHERS.select, _codes(events))]

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        codes = _codes(events)
        if not codes:
            return
        rows: dict[str, list[Any]] = {
            r["code"]: list(r) for r in await conn.fetch(VOUCHERS.select, list(codes))
        }
        existed = set(rows)
        new: list[list[Any]] = []  # redemptions inserted by this batch, in stream order
        by_id: dict[str, list[Any]] = {}
        active: set[tuple[str, str]] = set()  # (code, customer) of this batch's live redemptions
        # reversals of redemptions of earlier batches (redemption rows holding only the id and
        # the reversal), by id: the first wins
        earlier: dict[str, list[Any]] = {}

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
                customer = event["customer_id"]
                # in REDEMPTIONS column order (the hot path: no per-row name lookups)
                redemption = [
                    redemption_id,
                    code,
                    customer,
                    event["credit_baisa"],
                    at,
                    seq,
                    env["command_id"],
                    None,
                    None,
                    None,
                    event["user_id"],
                ]
                pair = (code, customer)
                if redemption_id in by_id or pair in active:
                    raise asyncpg.UniqueViolationError(
                        f"redemption {redemption_id!r} of {pair} recorded twice "
                        "(its insert violates a unique index of redemptions)"
                    )
                active.add(pair)
                new.append(redemption)
                by_id[redemption_id] = redemption
                row[_V_TIMES] += 1
                row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif kind == _ISSUED:
                row = rows.get(code)
                if row is None:
                    rows[code] = VOUCHERS.new_row(
                        code=code,
                        credit_baisa=event["credit_baisa"],
                        description=event["description"],
                        active=event["active"],
                        revoked=False,
                        max_redemptions=event["max_redemptions"],
                        times_redeemed=0,
                        created_at=at,
                        updated_at=at,
                        revoked_at=None,
                        last_seq=seq,
                        **terms_columns(event),
                        share_received=None,
                        share_released=None,
                        share_pool_empty=None,
                    )
                else:
                    row[_V_CREDIT] = event["credit_baisa"]
                    row[_V_DESC] = event["description"]
                    row[_V_ACTIVE] = event["active"]
                    row[_V_MAX] = event["max_redemptions"]
                    for column, value in terms_columns(event).items():
                        row[_V[column]] = value
                    row[_V_REVOKED], row[_V_REVOKED_AT] = False, None
                    row[_V_UPDATED], row[_V_SEQ] = at, seq
            elif kind in (_SHARE_IN, _SHARE_OUT, _SHARE_WANTED):
                row = rows.get(code)
                if row is None:
                    raise _foreign_key_error(code)
                if kind == _SHARE_WANTED:
                    pass  # the hub's business (its allocator reads it from the trail)
                elif kind == _SHARE_IN:
                    row[_V_SHARE_IN] = event["allotted_total"]
                    row[_V_POOL_EMPTY] = event["pool_empty"]
                    if row[_V_SHARE_OUT] is None:
                        row[_V_SHARE_OUT] = 0
                else:
                    row[_V_SHARE_OUT] = event["released_total"]
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
                        found[_R_REVERSED_AT] = at
                        found[_R_REVERSED_SEQ] = seq
                        found[_R_REASON] = event["reason"]
                        active.discard((found[_R_CODE], found[_R_CUSTOMER]))
                elif redemption_id not in earlier:
                    reversal: list[Any] = [None] * len(REDEMPTIONS.names)
                    reversal[_R_ID] = redemption_id
                    reversal[_R_REVERSED_AT] = at
                    reversal[_R_REVERSED_SEQ] = seq
                    reversal[_R_REASON] = event["reason"]
                    earlier[redemption_id] = reversal
                row = rows.get(code)
                if row is not None:
                    row[_V_TIMES] -= 1
                    row[_V_UPDATED], row[_V_SEQ] = at, seq

        created = [tuple(r) for code, r in rows.items() if code not in existed]
        changed = [r for code, r in rows.items() if code in existed]
        if created:
            await conn.copy_records_to_table(VOUCHERS.name, columns=VOUCHERS.names, records=created)
        if changed:
            await conn.execute(VOUCHERS.update, *VOUCHERS.update_args(changed))
        # Reversals of earlier rows first: they only ever free a (code, customer) slot that a
        # redemption of this batch may take again.
        if earlier:
            await conn.execute(REDEMPTIONS.update, *REDEMPTIONS.update_args(list(earlier.values())))
        if new:
            await conn.copy_records_to_table(
                REDEMPTIONS.name, columns=REDEMPTIONS.names, records=[tuple(r) for r in new]
            )
