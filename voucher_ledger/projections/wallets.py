"""The ``wallets`` projection: ``wallets``, ``credit_entries`` and ``orders`` from wallet events.

Statements run in stream order (consecutive runs of one statement as one ``executemany``); a
credit movement updates the wallet row and records the entry with the balance after it in one
statement, so every entry carries the running balance the CHECK constraints guard.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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
)
from voucher_ledger.projections.projector import Conn, Ops, StreamEvent

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
                    total_baisa, amount_due_baisa, status, created_at, updated_at, last_seq)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb, $8, $9, $9, 'opened', $10, $10, $11)
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
                  amount_due_baisa = total_baisa - $3, amount_paid_baisa = $4,
                  stripe_session_id = COALESCE($5, stripe_session_id),
                  updated_at = $6, last_seq = $7
WHERE order_id = $1
"""
_FAIL = """
UPDATE orders SET status = 'failed', failure_reason = $2, failure_message = $3,
                  release_slot = $4, updated_at = $5, last_seq = $6
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


class WalletProjection:
    """``wallets``, ``credit_entries`` and ``orders``."""

    name = "wallets"
    tables = ("wallets", "credit_entries", "orders")

    async def apply(self, conn: Conn, events: Sequence[StreamEvent]) -> None:
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
