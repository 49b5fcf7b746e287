"""The ``campaigns`` read model (issue #21): ``campaigns``, ``campaign_codes`` and
``campaign_redemptions``.

As the other read models (``model``): a batch is folded in memory; campaign rows it touches are
read first, new ones go in with ``COPY`` and changed ones with one ``UPDATE``; codes and
redemptions are inserted with ``COPY`` (a generation of 100,000 codes is one ``COPY``), and
reversals of redemptions of earlier batches set with one ``UPDATE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from voucher_ledger.projections.model import Column, Conn, PlainEvent, Table
from voucher_ledger.projections.prefetch import Want
from voucher_ledger.projections.vouchers import terms_columns

CAMPAIGNS = Table(
    "campaigns",
    Column("campaign_id", "text"),
    Column("name", "text"),
    Column("description", "text"),
    Column("kind", "text"),
    Column("credit_baisa", "bigint"),
    Column("max_redemptions", "integer"),
    Column("budget_baisa", "bigint"),
    Column("code_max_redemptions", "integer"),
    Column("active", "boolean", updated=True),
    Column("revoked", "boolean", updated=True),
    Column("codes_issued", "integer", updated=True),
    Column("times_redeemed", "integer", updated=True),
    Column("granted_baisa", "bigint", updated=True),
    Column("created_at", "timestamptz"),
    Column("updated_at", "timestamptz", updated=True),
    Column("revoked_at", "timestamptz", updated=True),
    Column("last_seq", "bigint", updated=True),
    Column("starts_at", "timestamptz"),
    Column("expires_at", "timestamptz"),
    Column("plans", "jsonb"),
    Column("min_order_baisa", "bigint"),
    Column("new_organizations_only", "boolean"),
    Column("credit_valid_for_seconds", "bigint"),
    Column("discount", "jsonb"),  # a discount campaign's terms (issue #21)
)
CAMPAIGN_CODES = Table(
    "campaign_codes",
    Column("code", "text"),
    Column("campaign_id", "text"),
    Column("ordinal", "integer"),
    Column("batch", "text"),
    Column("prefix", "text"),
    Column("created_at", "timestamptz"),
    Column("seq", "bigint"),
)
CAMPAIGN_REDEMPTIONS = Table(
    "campaign_redemptions",
    Column("redemption_id", "text"),
    Column("campaign_id", "text"),
    Column("code", "text"),
    Column("customer_id", "text"),
    Column("user_id", "text"),
    Column("credit_baisa", "bigint"),
    Column("redeemed_at", "timestamptz"),
    Column("seq", "bigint"),
    Column("command_id", "text"),
    Column("order_id", "text"),
    Column("reversed_at", "timestamptz", updated=True),
    Column("reversed_seq", "bigint", updated=True),
    Column("reversal_reason", "text", updated=True),
    where="campaign_redemptions.reversed_at IS NULL",
)

_C = CAMPAIGNS.index
_C_ACTIVE, _C_REVOKED, _C_CODES = _C["active"], _C["revoked"], _C["codes_issued"]
_C_TIMES, _C_GRANTED = _C["times_redeemed"], _C["granted_baisa"]
_C_UPDATED, _C_REVOKED_AT, _C_SEQ = _C["updated_at"], _C["revoked_at"], _C["last_seq"]
_R = CAMPAIGN_REDEMPTIONS.index
_R_ID, _R_CAMPAIGN, _R_CUSTOMER = _R["redemption_id"], _R["campaign_id"], _R["customer_id"]
_R_REVERSED_AT, _R_REVERSED_SEQ = _R["reversed_at"], _R["reversed_seq"]
_R_REASON = _R["reversal_reason"]

_CREATED, _GENERATED, _REDEEMED, _REVERSED, _REVOKED = (
    "campaign.created",
    "campaign.codes_generated",
    "campaign.code_redeemed",
    "campaign.redemption_reversed",
    "campaign.revoked",
)
_CAMPAIGN_EVENTS = frozenset((_CREATED, _GENERATED, _REDEEMED, _REVERSED, _REVOKED))


def _missing(campaign_id: str) -> asyncpg.ForeignKeyViolationError:
    return asyncpg.ForeignKeyViolationError(
        f"an event of campaign {campaign_id!r}, which has no row (an insert would violate a "
        "foreign key to campaigns)"
    )


def _campaign_ids(events: Sequence[PlainEvent]) -> set[str]:
    return {
        item.doc["event"]["campaign_id"]
        for item in events
        if item.doc["event"]["type"] in _CAMPAIGN_EVENTS
    }


class CampaignProjection:
    """``campaigns``, ``campaign_codes`` and ``campaign_redemptions``."""

    name = "campaigns"
    tables = (CAMPAIGNS.name, CAMPAIGN_CODES.name, CAMPAIGN_REDEMPTIONS.name)
    keyed = frozenset((CAMPAIGNS.name, CAMPAIGN_REDEMPTIONS.name))

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]:
        """The reads :meth:`apply` will make (projections/prefetch.py)."""
        return [(CAMPAIGNS.select, _campaign_ids(events))]

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        ids = _campaign_ids(events)
        if not ids:
            return
        rows: dict[str, list[Any]] = {
            r["campaign_id"]: list(r) for r in await conn.fetch(CAMPAIGNS.select, list(ids))
        }
        existed = set(rows)
        codes: list[tuple[Any, ...]] = []
        new: list[list[Any]] = []
        by_id: dict[str, list[Any]] = {}
        active: set[tuple[str, str]] = set()
        earlier: dict[str, list[Any]] = {}

        for item in events:
            env = item.doc
            event = env["event"]
            kind = event["type"]
            if kind not in _CAMPAIGN_EVENTS:
                continue
            at = env["occurred_at"]
            seq = item.seq
            cid = event["campaign_id"]
            row = rows.get(cid)
            if kind == _CREATED:
                if row is not None:
                    raise asyncpg.UniqueViolationError(f"campaign {cid!r} created twice")
                rows[cid] = CAMPAIGNS.new_row(
                    campaign_id=cid,
                    name=event["name"],
                    description=event["description"],
                    kind=event["kind"],
                    credit_baisa=event["credit_baisa"],
                    max_redemptions=event["max_redemptions"],
                    budget_baisa=event["budget_baisa"],
                    code_max_redemptions=event["code_max_redemptions"],
                    active=event["active"],
                    revoked=False,
                    codes_issued=0,
                    times_redeemed=0,
                    granted_baisa=0,
                    created_at=at,
                    updated_at=at,
                    revoked_at=None,
                    last_seq=seq,
                    **terms_columns(event),
                )
                continue
            if row is None:
                raise _missing(cid)
            if kind == _GENERATED:
                first = row[_C_CODES]
                batch = env["command_id"]
                prefix = event["prefix"]
                codes.extend(
                    (code, cid, first + n, batch, prefix, at, seq)
                    for n, code in enumerate(event["codes"])
                )
                row[_C_CODES] = first + len(event["codes"])
            elif kind == _REDEEMED:
                redemption_id = event["redemption_id"]
                pair = (cid, event["customer_id"])
                if redemption_id in by_id or pair in active:
                    raise asyncpg.UniqueViolationError(
                        f"campaign redemption {redemption_id!r} of {pair} recorded twice"
                    )
                redemption = CAMPAIGN_REDEMPTIONS.new_row(
                    redemption_id=redemption_id,
                    campaign_id=cid,
                    code=event["code"],
                    customer_id=event["customer_id"],
                    user_id=event["user_id"],
                    credit_baisa=event["credit_baisa"],
                    redeemed_at=at,
                    seq=seq,
                    command_id=env["command_id"],
                    order_id=event["order_id"],
                    reversed_at=None,
                    reversed_seq=None,
                    reversal_reason=None,
                )
                active.add(pair)
                new.append(redemption)
                by_id[redemption_id] = redemption
                row[_C_TIMES] += 1
                row[_C_GRANTED] += event["credit_baisa"]
            elif kind == _REVERSED:
                redemption_id = event["redemption_id"]
                found = by_id.get(redemption_id)
                if found is not None:
                    if found[_R_REVERSED_AT] is None:
                        found[_R_REVERSED_AT] = at
                        found[_R_REVERSED_SEQ] = seq
                        found[_R_REASON] = event["reason"]
                        active.discard((found[_R_CAMPAIGN], found[_R_CUSTOMER]))
                elif redemption_id not in earlier:
                    reversal: list[Any] = [None] * len(CAMPAIGN_REDEMPTIONS.names)
                    reversal[_R_ID] = redemption_id
                    reversal[_R_REVERSED_AT] = at
                    reversal[_R_REVERSED_SEQ] = seq
                    reversal[_R_REASON] = event["reason"]
                    earlier[redemption_id] = reversal
                row[_C_TIMES] -= 1
                row[_C_GRANTED] -= event["credit_baisa"]
            else:  # _REVOKED
                row[_C_REVOKED], row[_C_ACTIVE], row[_C_REVOKED_AT] = True, False, at
            row[_C_UPDATED], row[_C_SEQ] = at, seq

        created = [tuple(r) for cid, r in rows.items() if cid not in existed]
        changed = [r for cid, r in rows.items() if cid in existed]
        if created:
            await conn.copy_records_to_table(
                CAMPAIGNS.name, columns=CAMPAIGNS.names, records=created
            )
        if changed:
            await conn.execute(CAMPAIGNS.update, *CAMPAIGNS.update_args(changed))
        if codes:
            await conn.copy_records_to_table(
                CAMPAIGN_CODES.name, columns=CAMPAIGN_CODES.names, records=codes
            )
        if earlier:
            await conn.execute(
                CAMPAIGN_REDEMPTIONS.update,
                *CAMPAIGN_REDEMPTIONS.update_args(list(earlier.values())),
            )
        if new:
            await conn.copy_records_to_table(
                CAMPAIGN_REDEMPTIONS.name,
                columns=CAMPAIGN_REDEMPTIONS.names,
                records=[tuple(r) for r in new],
            )
