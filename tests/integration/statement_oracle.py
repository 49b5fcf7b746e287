"""The read models as one statement per event (on the decoded models): the test oracle the
product's appliers (``projections/vouchers.py``, ``wallets.py``, ``audit.py``: a batch folded
in memory, a few statements per table) are compared with, for every event type, batch size and
re-delivery (``test_projections.py``). These were the live projector's statements before the
appliers took over; they are kept here unchanged, as a second, independent implementation.

Statements run in stream order (consecutive runs of one statement as one ``executemany``); a
credit movement updates the wallet row and records the entry with the balance after it in one
statement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from voucher_ledger.ledger.events import (
    CampaignCodeRedeemed,
    CampaignCodesGenerated,
    CampaignCreated,
    CampaignRedemptionReversed,
    CampaignRevoked,
    CreditCaptured,
    CreditExpired,
    CreditGranted,
    CreditReleased,
    CreditReserved,
    GlobalIssued,
    GlobalObserved,
    GlobalRecallRequested,
    GlobalRevoked,
    GlobalShareAllotted,
    GrantRevoked,
    InvoiceRecorded,
    OrderAbandoned,
    OrderCompleted,
    OrderFailed,
    OrderOpened,
    OrderPaymentRequested,
    OrderPlaced,
    OrderRefundDue,
    OrderSessionCreated,
    RedemptionReversed,
    ShareReceived,
    ShareReleased,
    ShareWanted,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
)
from voucher_ledger.projections.audit import AUDIT_LOG, AuditProjection
from voucher_ledger.projections.billing import (
    INVOICE_STATUS,
    BillingProjection,
    invoice_id,
    one_month_after,
    subscription_id,
)
from voucher_ledger.projections.campaigns import CampaignProjection
from voucher_ledger.projections.global_vouchers import GlobalVoucherProjection
from voucher_ledger.projections.model import Conn, PlainEvent, StreamEvent, stream_event
from voucher_ledger.projections.reports import ReportProjection
from voucher_ledger.projections.vouchers import VoucherProjection
from voucher_ledger.projections.wallets import WalletProjection


def models(events: Sequence[PlainEvent], *, parts: bool = True) -> list[StreamEvent]:
    """The projector's plain events decoded into the models, from their stored bodies; an
    ``order.placed`` as its parts (``OrderPlaced.parts``), each at its sequence, unless
    ``parts`` is false (the audit trail records each stored event)."""
    out: list[StreamEvent] = []
    for e in events:
        item = stream_event(e.seq, e.raw.encode())
        event = item.envelope.event
        if parts and isinstance(event, OrderPlaced):
            out.extend(
                StreamEvent(item.seq, item.envelope.model_copy(update={"event": p}), item.raw)
                for p in event.parts()
            )
        else:
            out.append(item)
    return out


class Ops:
    """Statements in stream order; consecutive runs of one statement become one executemany."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, list[tuple[Any, ...]]]] = []

    def add(self, sql: str, args: tuple[Any, ...]) -> None:
        if self.runs and self.runs[-1][0] == sql:
            self.runs[-1][1].append(args)
        else:
            self.runs.append((sql, [args]))

    async def run(self, conn: Conn) -> None:
        for sql, rows in self.runs:
            if len(rows) == 1:
                await conn.execute(sql, *rows[0])
            else:
                await conn.executemany(sql, rows)


_UPSERT = """
INSERT INTO vouchers (code, credit_baisa, description, active, revoked, max_redemptions,
                      times_redeemed, created_at, updated_at, revoked_at, last_seq,
                      starts_at, expires_at, plans, min_order_baisa, new_organizations_only,
                      discount)
VALUES ($1, $2, $3, $4, false, $5, 0, $6, $6, NULL, $7, $8, $9, $10::jsonb, $11, $12, $13::jsonb)
ON CONFLICT (code) DO UPDATE SET
    discount = EXCLUDED.discount,
    credit_baisa = EXCLUDED.credit_baisa, description = EXCLUDED.description,
    active = EXCLUDED.active, max_redemptions = EXCLUDED.max_redemptions,
    revoked = false, revoked_at = NULL,
    starts_at = EXCLUDED.starts_at, expires_at = EXCLUDED.expires_at, plans = EXCLUDED.plans,
    min_order_baisa = EXCLUDED.min_order_baisa,
    new_organizations_only = EXCLUDED.new_organizations_only
"""
_REVOKE = "UPDATE vouchers SET revoked = true, active = false, revoked_at = $2 WHERE code = $1"
_SHARE_IN = """
UPDATE vouchers SET share_received = $2, share_pool_empty = $3,
                    share_released = coalesce(share_released, 0)
WHERE code = $1
"""
_SHARE_OUT = "UPDATE vouchers SET share_released = $2 WHERE code = $1"
_REDEEM = """
INSERT INTO redemptions (redemption_id, code, customer_id, credit_baisa, redeemed_at, seq,
                         command_id, user_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
_REVERSE = """
UPDATE redemptions SET reversed_at = $2, reversed_seq = $3, reversal_reason = $4
WHERE redemption_id = $1 AND reversed_at IS NULL
"""
_TOUCH = """
UPDATE vouchers SET times_redeemed = vouchers.times_redeemed + d.delta,
                    updated_at = d.at, last_seq = d.seq
FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::bigint[]) AS d(code, delta, at, seq)
WHERE vouchers.code = d.code
"""


class VoucherStatements:
    """``vouchers`` and ``redemptions``, a statement per event."""

    name = VoucherProjection.name
    tables = VoucherProjection.tables
    keyed = VoucherProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        events = models(plain)
        ops = Ops()
        touched: dict[str, list[Any]] = {}  # code -> [delta, at, seq]

        def touch(code: str, delta: int, at: datetime, seq: int) -> None:
            entry = touched.setdefault(code, [0, at, seq])
            entry[0] += delta
            entry[1], entry[2] = at, seq

        for item in events:
            env = item.envelope
            event = env.event
            at = env.occurred_at
            match event:
                case VoucherIssued():
                    ops.add(
                        _UPSERT,
                        (
                            event.code,
                            event.credit_baisa,
                            event.description,
                            event.active,
                            event.max_redemptions,
                            at,
                            item.seq,
                            event.starts_at,
                            event.expires_at,
                            None if event.plans is None else json.dumps(event.plans),
                            event.min_order_baisa,
                            event.new_organizations_only,
                            None if event.discount is None else event.discount.model_dump_json(),
                        ),
                    )
                    touch(event.code, 0, at, item.seq)
                case VoucherRevoked():
                    ops.add(_REVOKE, (event.code, at))
                    touch(event.code, 0, at, item.seq)
                case ShareReceived():
                    ops.add(_SHARE_IN, (event.code, event.allotted_total, event.pool_empty))
                    touch(event.code, 0, at, item.seq)
                case ShareReleased():
                    ops.add(_SHARE_OUT, (event.code, event.released_total))
                    touch(event.code, 0, at, item.seq)
                case ShareWanted():  # no column of its own
                    touch(event.code, 0, at, item.seq)
                case VoucherRedeemed():
                    ops.add(
                        _REDEEM,
                        (
                            event.redemption_id,
                            event.code,
                            event.customer_id,
                            event.credit_baisa,
                            at,
                            item.seq,
                            env.command_id,
                            event.user_id,
                        ),
                    )
                    touch(event.code, 1, at, item.seq)
                case RedemptionReversed():
                    ops.add(_REVERSE, (event.redemption_id, at, item.seq, event.reason))
                    touch(event.code, -1, at, item.seq)
        await ops.run(conn)
        if touched:
            codes = list(touched)
            await conn.execute(
                _TOUCH,
                codes,
                [touched[c][0] for c in codes],
                [touched[c][1] for c in codes],
                [touched[c][2] for c in codes],
            )


class AuditStatements:
    """``audit_log``: every event verbatim with its stream sequence, from the models."""

    name = AuditProjection.name
    tables = AuditProjection.tables
    keyed = AuditProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        events = models(plain, parts=False)
        # COPY (binary): several times faster than INSERTs for the one table every event
        # lands in. The table name is unqualified on purpose: a rebuild sets search_path.
        await conn.copy_records_to_table(
            "audit_log",
            columns=AUDIT_LOG.names,
            records=[
                (
                    e.seq,
                    e.envelope.event_id,
                    e.envelope.event.type,
                    e.envelope.event.version,
                    e.envelope.aggregate,
                    e.envelope.aggregate_id,
                    e.envelope.actor.sub,
                    e.envelope.actor.role,
                    e.envelope.command_id,
                    e.envelope.occurred_at,
                    e.raw,
                )
                for e in events
            ],
        )


_MOVE = """
WITH w AS (
    INSERT INTO wallets AS cur (customer_id, balance_baisa, reserved_baisa, updated_at, last_seq)
    -- A wallet's first movement is a grant; the candidate row must pass the CHECKs even when
    -- it conflicts (Postgres checks it first), so the deltas are applied in DO UPDATE only.
    VALUES ($2, GREATEST($5::bigint, 0),
            LEAST(GREATEST($6::bigint, 0), GREATEST($5::bigint, 0)), $11, $1)
    ON CONFLICT (customer_id) DO UPDATE SET
        balance_baisa = cur.balance_baisa + $5::bigint,
        reserved_baisa = cur.reserved_baisa + $6::bigint,
        updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq
    RETURNING balance_baisa, reserved_baisa
)
INSERT INTO credit_entries (seq, customer_id, kind, amount_baisa, balance_delta_baisa, reason,
                            order_id, code, redemption_id, balance_after_baisa,
                            reserved_after_baisa, created_at)
SELECT $1, $2, $3, $4, $5, $7, $8, $9, $10, w.balance_baisa, w.reserved_baisa, $11 FROM w
"""
_OPEN = """
INSERT INTO orders (order_id, customer_id, tenant_id, plan_id, apps, addons, lines, promo_code,
                    total_baisa, amount_due_baisa, status, created_at, updated_at, last_seq,
                    user_id, member_by_claim, owns, discount_baisa, discount_code)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb, $8, $9, $9::bigint - $14::bigint,
        'opened', $10, $10,
        $11, $12, $13, NOT $13, $14, $15)
"""
_SET_REDEMPTION = (
    "UPDATE orders SET redemption_id = $2, updated_at = $3, last_seq = $4 WHERE order_id = $1"
)
_AWAIT = """
UPDATE orders SET status = 'awaiting_payment', credit_applied_baisa = $2, amount_due_baisa = $3,
                  updated_at = $4, last_seq = $5
WHERE order_id = $1
"""
_SESSION = """
UPDATE orders SET stripe_session_id = $2, session_url = $3, updated_at = $4, last_seq = $5
WHERE order_id = $1
"""
_COMPLETE = """
UPDATE orders SET status = 'completed', paid_by_credit = $2, credit_applied_baisa = $3,
                  amount_due_baisa = total_baisa - discount_baisa - $3, amount_paid_baisa = $4,
                  stripe_session_id = COALESCE($5, stripe_session_id),
                  updated_at = $6, last_seq = $7
WHERE order_id = $1
"""
_FAIL = """
UPDATE orders SET status = 'failed', failure_reason = $2, failure_message = $3,
                  release_slot = $4, updated_at = $5, last_seq = $6, owns = false
WHERE order_id = $1
"""
_ABANDON = """
UPDATE orders SET status = 'abandoned', failure_reason = $2, updated_at = $3, last_seq = $4
WHERE order_id = $1
"""
_REFUND_DUE = """
UPDATE orders SET status = 'refund_due', amount_paid_baisa = $2, stripe_session_id = $3,
                  updated_at = $4, last_seq = $5
WHERE order_id = $1
"""


_LOT = """
INSERT INTO credit_lots (redemption_id, customer_id, code, order_id, granted_baisa, left_baisa,
                         expires_at, last_seq)
VALUES ($1, $2, $3, $4, $5, $5, $6, $7)
"""
_SHIFT = (
    "UPDATE credit_lots SET left_baisa = left_baisa + $2, last_seq = $3 WHERE redemption_id = $1"
)


class WalletStatements:
    """``wallets``, ``credit_entries`` and ``orders``, a statement per event."""

    name = WalletProjection.name
    tables = WalletProjection.tables
    keyed = WalletProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        events = models(plain)
        ops = Ops()

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
            ops.add(
                _MOVE,
                (
                    item.seq,
                    env.aggregate_id,
                    kind,
                    amount,
                    delta,
                    hold,
                    reason,
                    order_id,
                    code,
                    redemption_id,
                    env.occurred_at,
                ),
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
                    ops.add(_SET_REDEMPTION, (event.order_id, event.redemption_id, at, seq))
                    if event.expires_at is not None:
                        ops.add(
                            _LOT,
                            (
                                event.redemption_id,
                                env.aggregate_id,
                                event.code,
                                event.order_id,
                                event.amount_baisa,
                                event.expires_at,
                                seq,
                            ),
                        )
                case CreditExpired():
                    move(
                        item,
                        "expired",
                        event.amount_baisa,
                        -event.amount_baisa,
                        0,
                        "credit-expired",
                        event.order_id,
                        event.code,
                        event.redemption_id,
                    )
                    ops.add(_SHIFT, (event.redemption_id, -event.amount_baisa, seq))
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
                    for share in event.lots:
                        ops.add(_SHIFT, (share.redemption_id, -share.amount_baisa, seq))
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
                    for share in event.lots:
                        ops.add(_SHIFT, (share.redemption_id, -share.amount_baisa, seq))
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
                    for share in event.lots:
                        ops.add(_SHIFT, (share.redemption_id, share.amount_baisa, seq))
                case OrderOpened():
                    ops.add(
                        _OPEN,
                        (
                            event.order_id,
                            env.aggregate_id,
                            event.tenant_id,
                            event.plan_id,
                            json.dumps(event.apps),
                            json.dumps(event.addons),
                            json.dumps([line.model_dump() for line in event.lines]),
                            event.promo_code,
                            event.total_baisa,
                            at,
                            seq,
                            event.user_id,
                            event.member_by_claim,
                            event.discount_baisa,
                            event.discount_code,
                        ),
                    )
                case OrderPaymentRequested():
                    ops.add(
                        _AWAIT,
                        (
                            event.order_id,
                            event.credit_applied_baisa,
                            event.amount_due_baisa,
                            at,
                            seq,
                        ),
                    )
                case OrderSessionCreated():
                    ops.add(
                        _SESSION, (event.order_id, event.session_id, event.session_url, at, seq)
                    )
                case OrderCompleted():
                    ops.add(
                        _COMPLETE,
                        (
                            event.order_id,
                            event.paid_by_credit,
                            event.credit_applied_baisa,
                            event.amount_paid_baisa,
                            event.stripe_session_id,
                            at,
                            seq,
                        ),
                    )
                case OrderFailed():
                    ops.add(
                        _FAIL,
                        (event.order_id, event.reason, event.message, event.release_slot, at, seq),
                    )
                case OrderAbandoned():
                    ops.add(_ABANDON, (event.order_id, event.reason, at, seq))
                case OrderRefundDue():
                    ops.add(
                        _REFUND_DUE,
                        (
                            event.order_id,
                            event.amount_paid_baisa,
                            event.stripe_session_id,
                            at,
                            seq,
                        ),
                    )
                case _:
                    pass  # voucher events: not this projection's
        await ops.run(conn)


_SUB_ORDER = """
INSERT INTO subscription_orders (order_id, customer_id, tenant_id, plan_id, total_baisa)
VALUES ($1, $2, $3, $4, $5)
"""
_SUBSCRIBE = """
INSERT INTO subscriptions AS s (tenant_id, id, customer_id, plan_id, status, amount_baisa,
                                order_id, stripe_customer_id, current_period_start,
                                current_period_end, created_at, updated_at, last_seq)
SELECT o.tenant_id, $2, o.customer_id, o.plan_id, 'active', o.total_baisa, o.order_id, NULL,
       $3, $4, $3, $3, $5
  FROM subscription_orders o WHERE o.order_id = $1
ON CONFLICT (tenant_id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id, plan_id = EXCLUDED.plan_id, status = 'active',
    amount_baisa = EXCLUDED.amount_baisa, order_id = EXCLUDED.order_id,
    current_period_start = EXCLUDED.current_period_start,
    current_period_end = EXCLUDED.current_period_end, updated_at = EXCLUDED.updated_at,
    last_seq = EXCLUDED.last_seq
"""
_INVOICE = """
INSERT INTO invoices AS i (stripe_invoice_id, id, customer_id, tenant_id, stripe_customer_id,
                           amount_baisa, currency, status, period_start, period_end, pdf_url,
                           created_at, updated_at, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)
ON CONFLICT (stripe_invoice_id) DO UPDATE SET
    stripe_customer_id = COALESCE(EXCLUDED.stripe_customer_id, i.stripe_customer_id),
    amount_baisa = EXCLUDED.amount_baisa, status = EXCLUDED.status,
    period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
    pdf_url = EXCLUDED.pdf_url, updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq
"""
_SUBSCRIPTION_INVOICED = """
UPDATE subscriptions SET status = $2, stripe_customer_id = COALESCE($3, stripe_customer_id),
                         updated_at = $4, last_seq = $5
WHERE tenant_id = $1
"""


class BillingStatements:
    """``subscription_orders``, ``subscriptions`` and ``invoices``, a statement per event."""

    name = BillingProjection.name
    tables = BillingProjection.tables
    keyed = BillingProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        ops = Ops()
        for item in models(plain):
            env, seq = item.envelope, item.seq
            event, at = env.event, env.occurred_at
            match event:
                case OrderOpened():
                    ops.add(
                        _SUB_ORDER,
                        (
                            event.order_id,
                            event.user_id,  # the login that ordered (the account is the wallet)
                            event.tenant_id,
                            event.plan_id,
                            event.total_baisa,
                        ),
                    )
                case OrderCompleted():
                    tenant = await _tenant_of(conn, ops, event.order_id)
                    if tenant is not None:
                        ops.add(
                            _SUBSCRIBE,
                            (
                                event.order_id,
                                subscription_id(tenant),
                                at,
                                one_month_after(at),
                                seq,
                            ),
                        )
                case InvoiceRecorded():
                    ops.add(
                        _INVOICE,
                        (
                            event.stripe_invoice_id,
                            invoice_id(event.stripe_invoice_id),
                            event.user_id or event.customer_id,
                            event.tenant_id,
                            event.stripe_customer_id,
                            event.amount_baisa,
                            event.currency,
                            INVOICE_STATUS[event.outcome],
                            event.period_start,
                            event.period_end,
                            event.pdf_url,
                            at,
                            seq,
                        ),
                    )
                    ops.add(
                        _SUBSCRIPTION_INVOICED,
                        (
                            event.tenant_id,
                            "active" if event.outcome == "paid" else "past_due",
                            event.stripe_customer_id,
                            at,
                            seq,
                        ),
                    )
                case _:
                    pass
        await ops.run(conn)


async def _tenant_of(conn: Conn, ops: Ops, order_id: str) -> str | None:
    """The completed order's tenant: the statements so far run first (it may be opened in
    this very batch)."""
    await ops.run(conn)
    ops.runs.clear()
    found = await conn.fetchval(
        "SELECT tenant_id FROM subscription_orders WHERE order_id = $1", order_id
    )
    return str(found) if found is not None else None


_CAMPAIGN = """
INSERT INTO campaigns (campaign_id, name, description, kind, credit_baisa, max_redemptions,
                       budget_baisa, code_max_redemptions, active, revoked, codes_issued,
                       times_redeemed, granted_baisa, created_at, updated_at, revoked_at,
                       last_seq, starts_at, expires_at, plans, min_order_baisa,
                       new_organizations_only, credit_valid_for_seconds, discount)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, false, 0, 0, 0, $10, $10, NULL, $11, $12, $13,
        $14::jsonb, $15, $16, $17, $18::jsonb)
"""
_CODES = """
WITH c AS (
    UPDATE campaigns SET codes_issued = codes_issued + cardinality($2::text[]),
                         updated_at = $5, last_seq = $6
    WHERE campaign_id = $1 RETURNING codes_issued - cardinality($2::text[]) AS first
)
INSERT INTO campaign_codes (code, campaign_id, ordinal, batch, prefix, created_at, seq)
SELECT u.code, $1, c.first + u.n - 1, $3, $4, $5, $6
FROM c, unnest($2::text[]) WITH ORDINALITY AS u(code, n)
"""
_CAMPAIGN_REDEEM = """
INSERT INTO campaign_redemptions (redemption_id, campaign_id, code, customer_id, user_id,
                                  credit_baisa, redeemed_at, seq, command_id, order_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""
_CAMPAIGN_REVERSE = """
UPDATE campaign_redemptions SET reversed_at = $2, reversed_seq = $3, reversal_reason = $4
WHERE redemption_id = $1 AND reversed_at IS NULL
"""
_CAMPAIGN_COUNT = """
UPDATE campaigns SET times_redeemed = times_redeemed + $2, granted_baisa = granted_baisa + $3,
                     updated_at = $4, last_seq = $5
WHERE campaign_id = $1
"""
_CAMPAIGN_REVOKE = """
UPDATE campaigns SET revoked = true, active = false, revoked_at = $2, updated_at = $2,
                     last_seq = $3
WHERE campaign_id = $1
"""


class CampaignStatements:
    """``campaigns``, ``campaign_codes`` and ``campaign_redemptions``, statements per event."""

    name = CampaignProjection.name
    tables = CampaignProjection.tables
    keyed = CampaignProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        ops = Ops()
        for item in models(plain):
            env = item.envelope
            event = env.event
            at, seq = env.occurred_at, item.seq
            match event:
                case CampaignCreated():
                    ops.add(
                        _CAMPAIGN,
                        (
                            event.campaign_id,
                            event.name,
                            event.description,
                            event.kind,
                            event.credit_baisa,
                            event.max_redemptions,
                            event.budget_baisa,
                            event.code_max_redemptions,
                            event.active,
                            at,
                            seq,
                            event.starts_at,
                            event.expires_at,
                            None if event.plans is None else json.dumps(event.plans),
                            event.min_order_baisa,
                            event.new_organizations_only,
                            event.credit_valid_for_seconds,
                            None if event.discount is None else event.discount.model_dump_json(),
                        ),
                    )
                case CampaignCodesGenerated():
                    args = (event.campaign_id, event.codes, env.command_id, event.prefix, at, seq)
                    ops.add(_CODES, args)
                case CampaignCodeRedeemed():
                    ops.add(
                        _CAMPAIGN_REDEEM,
                        (
                            event.redemption_id,
                            event.campaign_id,
                            event.code,
                            event.customer_id,
                            event.user_id,
                            event.credit_baisa,
                            at,
                            seq,
                            env.command_id,
                            event.order_id,
                        ),
                    )
                    ops.add(_CAMPAIGN_COUNT, (event.campaign_id, 1, event.credit_baisa, at, seq))
                case CampaignRedemptionReversed():
                    ops.add(_CAMPAIGN_REVERSE, (event.redemption_id, at, seq, event.reason))
                    ops.add(_CAMPAIGN_COUNT, (event.campaign_id, -1, -event.credit_baisa, at, seq))
                case CampaignRevoked():
                    ops.add(_CAMPAIGN_REVOKE, (event.campaign_id, at, seq))
        await ops.run(conn)


_GLOBAL = """
INSERT INTO global_vouchers (code, credit_baisa, description, max_redemptions, sovereigns,
                             share, revoked, revoked_at, pool, created_at, updated_at,
                             last_seq, starts_at, expires_at, plans, min_order_baisa,
                             new_organizations_only, credit_valid_for_seconds, discount)
VALUES ($1, $2, $3, $4, $5::jsonb, GREATEST(1, $4 / (2 * GREATEST(1, jsonb_array_length($5)))),
        false, NULL, $4, $6, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14::jsonb)
"""
_GLOBAL_SHARE = """
INSERT INTO global_shares (code, sovereign, allotted, released, requested, answered,
                           redeemed, trail_seq, updated_at)
VALUES ($1, $2, 0, 0, 0, 0, 0, 0, $3)
ON CONFLICT (code, sovereign) DO UPDATE SET updated_at = EXCLUDED.updated_at
"""
_GLOBAL_ALLOT = "UPDATE global_shares SET allotted = $3 WHERE code = $1 AND sovereign = $2"
_GLOBAL_RECALL = "UPDATE global_shares SET requested = $3 WHERE code = $1 AND sovereign = $2"
_GLOBAL_OBSERVE = """
UPDATE global_shares SET redeemed = $3, released = $4, answered = $5, trail_seq = $6
WHERE code = $1 AND sovereign = $2
"""
_GLOBAL_POOL = """
UPDATE global_vouchers SET updated_at = $2, last_seq = $3,
    pool = max_redemptions - (SELECT coalesce(sum(allotted - released), 0)
                              FROM global_shares WHERE code = $1)
WHERE code = $1
"""
_GLOBAL_REVOKE = """
UPDATE global_vouchers SET revoked = true, revoked_at = coalesce(revoked_at, $2),
                           updated_at = $2, last_seq = $3
WHERE code = $1
"""


class GlobalStatements:
    """``global_vouchers`` and ``global_shares`` (issue #22), statements per event."""

    name = GlobalVoucherProjection.name
    tables = GlobalVoucherProjection.tables
    keyed = GlobalVoucherProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        ops = Ops()
        for item in models(plain):
            env = item.envelope
            event = env.event
            at, seq = env.occurred_at, item.seq
            match event:
                case GlobalIssued():
                    ops.add(
                        _GLOBAL,
                        (
                            event.code,
                            event.credit_baisa,
                            event.description,
                            event.max_redemptions,
                            json.dumps(event.sovereigns),
                            at,
                            seq,
                            event.starts_at,
                            event.expires_at,
                            None if event.plans is None else json.dumps(event.plans),
                            event.min_order_baisa,
                            event.new_organizations_only,
                            event.credit_valid_for_seconds,
                            None if event.discount is None else event.discount.model_dump_json(),
                        ),
                    )
                    continue
                case GlobalShareAllotted():
                    ops.add(_GLOBAL_SHARE, (event.code, event.sovereign, at))
                    ops.add(_GLOBAL_ALLOT, (event.code, event.sovereign, event.allotted_total))
                case GlobalRecallRequested():
                    ops.add(_GLOBAL_SHARE, (event.code, event.sovereign, at))
                    ops.add(_GLOBAL_RECALL, (event.code, event.sovereign, event.requested_total))
                case GlobalObserved():
                    ops.add(_GLOBAL_SHARE, (event.code, event.sovereign, at))
                    ops.add(
                        _GLOBAL_OBSERVE,
                        (
                            event.code,
                            event.sovereign,
                            event.redeemed,
                            event.released_total,
                            event.answered_total,
                            event.trail_seq,
                        ),
                    )
                case GlobalRevoked():
                    ops.add(_GLOBAL_REVOKE, (event.code, at, seq))
                    continue
                case _:
                    continue
            ops.add(_GLOBAL_POOL, (event.code, at, seq))
        await ops.run(conn)


class ReportStatements:
    """``report_facts`` and the tables it attributes by: the read model's applier given one
    event at a time (each event its own batch, so every row the next event needs is read
    back from the tables). Not independent of the applier: what it checks is that batching
    changes nothing. The figures' independent check is ``verify``'s fold (``report_fold``)
    and the fold in ``tests/e2e/test_reports.py``."""

    name = ReportProjection.name
    tables = ReportProjection.tables
    keyed = ReportProjection.keyed

    async def apply(self, conn: Conn, plain: Sequence[PlainEvent]) -> None:
        applier = ReportProjection()
        for item in plain:
            await applier.apply(conn, [item])


ORACLES = (
    VoucherStatements(),
    WalletStatements(),
    BillingStatements(),
    CampaignStatements(),
    ReportStatements(),
    GlobalStatements(),
    AuditStatements(),
)
