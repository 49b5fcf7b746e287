"""The ``global_vouchers`` read model at the hub (issue #22): ``global_vouchers`` (a global
code's definition, cap, pool, revocation) and ``global_shares`` (per code and Sovereign: what
the hub allotted and asked back, and what it last observed of the Sovereign on its trail).

Applied from the hub's own ``global.*`` events, as the other read models (``model``): a batch
is folded in memory; the rows it touches are read first, new ones go in with ``COPY`` and
changed ones with one ``UPDATE`` per table. A code's pool is the domain's
(``GlobalState.pool``): the cap less what the Sovereigns hold (allotted - released).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from voucher_ledger.ledger.global_voucher import share_of
from voucher_ledger.projections.model import Column, Conn, PlainEvent, Table, parameters_only
from voucher_ledger.projections.prefetch import Want
from voucher_ledger.projections.vouchers import plans_json, terms_columns

GLOBAL_VOUCHERS = Table(
    "global_vouchers",
    Column("code", "text"),
    Column("credit_baisa", "bigint"),
    Column("description", "text"),
    Column("max_redemptions", "integer"),
    Column("sovereigns", "jsonb"),
    Column("share", "integer"),
    Column("revoked", "boolean", updated=True),
    Column("revoked_at", "timestamptz", updated=True),
    Column("pool", "integer", updated=True),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
    Column("starts_at", "timestamptz"),
    Column("expires_at", "timestamptz"),
    Column("plans", "jsonb"),
    Column("min_order_baisa", "bigint"),
    Column("new_organizations_only", "boolean"),
    Column("credit_valid_for_seconds", "bigint"),
    Column("discount", "jsonb"),
)
GLOBAL_SHARES = Table(
    "global_shares",
    Column("code", "text"),
    Column("sovereign", "text"),
    Column("allotted", "integer", updated=True),
    Column("released", "integer", updated=True),
    Column("requested", "integer", updated=True),
    Column("answered", "integer", updated=True),
    Column("redeemed", "integer", updated=True),
    Column("trail_seq", "bigint", updated=True),
    Column("updated_at", "timestamptz", updated=True),
)

_G = GLOBAL_VOUCHERS.index
_G_CAP, _G_REVOKED, _G_REVOKED_AT = _G["max_redemptions"], _G["revoked"], _G["revoked_at"]
_G_POOL, _G_UPDATED, _G_SEQ = _G["pool"], _G["updated_at"], _G["last_seq"]
_S = GLOBAL_SHARES.index
_S_CODE, _S_SOVEREIGN = _S["code"], _S["sovereign"]
_S_ALLOTTED, _S_RELEASED, _S_REQUESTED = _S["allotted"], _S["released"], _S["requested"]
_S_ANSWERED, _S_REDEEMED, _S_TRAIL = _S["answered"], _S["redeemed"], _S["trail_seq"]
_S_UPDATED = _S["updated_at"]
_SHARE_FIGURES = (_S_ALLOTTED, _S_RELEASED, _S_REQUESTED, _S_ANSWERED, _S_REDEEMED, _S_TRAIL)
# by the whole primary key (the Table's UPDATE matches on the first column only)
_SHARES_UPDATE = parameters_only(
    """
UPDATE global_shares SET allotted = d.allotted, released = d.released,
    requested = d.requested, answered = d.answered, redeemed = d.redeemed,
    trail_seq = d.trail_seq, updated_at = d.updated_at
FROM unnest($1::text[], $2::text[], $3::integer[], $4::integer[], $5::integer[],
            $6::integer[], $7::integer[], $8::bigint[], $9::timestamptz[])
    AS d(code, sovereign, allotted, released, requested, answered, redeemed, trail_seq,
         updated_at)
WHERE global_shares.code = d.code AND global_shares.sovereign = d.sovereign
"""
)
_SHARES_OF = (
    f"SELECT {', '.join(GLOBAL_SHARES.names)} FROM global_shares "  # noqa: S608 - constant names
    "WHERE code = ANY($1::text[])"
)

_ISSUED, _ALLOTTED, _RECALL, _OBSERVED, _REVOKED = (
    "global.issued",
    "global.share_allotted",
    "global.recall_requested",
    "global.observed",
    "global.revoked",
)
_GLOBAL_EVENTS = frozenset((_ISSUED, _ALLOTTED, _RECALL, _OBSERVED, _REVOKED))


def _missing(code: str) -> asyncpg.ForeignKeyViolationError:
    return asyncpg.ForeignKeyViolationError(
        f"an event of global voucher {code!r}, which has no row (a share's insert would "
        "violate a foreign key to global_vouchers)"
    )


def _global_codes(events: Sequence[PlainEvent]) -> set[str]:
    return {
        item.doc["event"]["code"] for item in events if item.doc["event"]["type"] in _GLOBAL_EVENTS
    }


class GlobalVoucherProjection:
    """``global_vouchers`` and ``global_shares`` (the hub's; empty elsewhere)."""

    name = "global_vouchers"
    tables = (GLOBAL_VOUCHERS.name, GLOBAL_SHARES.name)
    keyed = frozenset(tables)

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]:
        """The reads :meth:`apply` will make (projections/prefetch.py)."""
        codes = _global_codes(events)
        return [(GLOBAL_VOUCHERS.select, codes), (_SHARES_OF, codes)]

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        codes = _global_codes(events)
        if not codes:
            return
        wanted = list(codes)
        rows: dict[str, list[Any]] = {
            r["code"]: list(r) for r in await conn.fetch(GLOBAL_VOUCHERS.select, wanted)
        }
        shares: dict[tuple[str, str], list[Any]] = {
            (r["code"], r["sovereign"]): list(r) for r in await conn.fetch(_SHARES_OF, wanted)
        }
        existed, shares_existed = set(rows), set(shares)

        for item in events:
            env = item.doc
            event = env["event"]
            kind = event["type"]
            if kind not in _GLOBAL_EVENTS:
                continue
            at, seq, code = env["occurred_at"], item.seq, event["code"]
            row = rows.get(code)
            if kind == _ISSUED:
                if row is not None:
                    raise asyncpg.UniqueViolationError(f"global voucher {code!r} issued twice")
                cap = event["max_redemptions"]
                rows[code] = GLOBAL_VOUCHERS.new_row(
                    code=code,
                    credit_baisa=event["credit_baisa"],
                    description=event["description"],
                    max_redemptions=cap,
                    sovereigns=plans_json(event["sovereigns"]),
                    share=share_of(cap, len(event["sovereigns"])),
                    revoked=False,
                    revoked_at=None,
                    pool=cap,
                    created_at=at,
                    updated_at=at,
                    last_seq=seq,
                    **terms_columns(event),
                )
                continue
            if row is None:
                raise _missing(code)
            if kind == _REVOKED:
                if not row[_G_REVOKED]:
                    row[_G_REVOKED], row[_G_REVOKED_AT] = True, at
            else:
                key = (code, event["sovereign"])
                share = shares.get(key)
                if share is None:
                    share = shares[key] = GLOBAL_SHARES.new_row(
                        code=code,
                        sovereign=event["sovereign"],
                        allotted=0,
                        released=0,
                        requested=0,
                        answered=0,
                        redeemed=0,
                        trail_seq=0,
                        updated_at=at,
                    )
                if kind == _ALLOTTED:
                    share[_S_ALLOTTED] = event["allotted_total"]
                elif kind == _RECALL:
                    share[_S_REQUESTED] = event["requested_total"]
                else:  # _OBSERVED
                    share[_S_REDEEMED] = event["redeemed"]
                    share[_S_RELEASED] = event["released_total"]
                    share[_S_ANSWERED] = event["answered_total"]
                    share[_S_TRAIL] = event["trail_seq"]
                share[_S_UPDATED] = at
            row[_G_UPDATED], row[_G_SEQ] = at, seq

        held: dict[str, int] = {}
        for (code, _), share in shares.items():
            held[code] = held.get(code, 0) + share[_S_ALLOTTED] - share[_S_RELEASED]
        for code, row in rows.items():
            row[_G_POOL] = row[_G_CAP] - held.get(code, 0)

        created = [tuple(r) for c, r in rows.items() if c not in existed]
        changed = [r for c, r in rows.items() if c in existed]
        if created:
            await conn.copy_records_to_table(
                GLOBAL_VOUCHERS.name, columns=GLOBAL_VOUCHERS.names, records=created
            )
        if changed:
            await conn.execute(GLOBAL_VOUCHERS.update, *GLOBAL_VOUCHERS.update_args(changed))
        new_shares = [tuple(s) for k, s in shares.items() if k not in shares_existed]
        old_shares = [s for k, s in shares.items() if k in shares_existed]
        if new_shares:
            await conn.copy_records_to_table(
                GLOBAL_SHARES.name, columns=GLOBAL_SHARES.names, records=new_shares
            )
        if old_shares:
            await conn.execute(
                _SHARES_UPDATE,
                *(
                    [s[i] for s in old_shares]
                    for i in (_S_CODE, _S_SOVEREIGN, *_SHARE_FIGURES, _S_UPDATED)
                ),
            )
