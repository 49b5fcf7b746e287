"""Verify the read models against the event stream.

The expected rows are computed from the stream by the domain folds (``ledger.voucher.fold``,
``ledger.wallet.fold``) and a plain walk over redemption events: none of the projectors' SQL is
involved. The read models are read in one REPEATABLE READ snapshot together with their
checkpoints, and each is compared with the stream folded up to its own checkpoint, so a
projector that is merely behind is not reported as drift (its lag is reported separately).

With the ledger's public key, every event up to the stream's head is also checked (its
signature and its place in its aggregate's chain, ``voucher_ledger.signing``): the first that
fails is reported by its stream sequence, and nothing from it on is folded.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from voucher_ledger.jetstream.api import JetStreamApiError
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger import campaign, global_voucher, voucher, wallet
from voucher_ledger.ledger.events import (
    CampaignCodeRedeemed,
    CampaignCodesGenerated,
    CampaignRedemptionReversed,
    CreditCaptured,
    CreditExpired,
    CreditGranted,
    CreditReleased,
    CreditReserved,
    GrantRevoked,
    InvoiceRecorded,
    OrderCompleted,
    OrderOpened,
    OrderPlaced,
    RecordedEvent,
    RedemptionReversed,
    VoucherRedeemed,
    decode_envelope,
)
from voucher_ledger.projections import sovereign_trail
from voucher_ledger.projections.billing import INVOICE_STATUS, one_month_after
from voucher_ledger.projections.replay import read_stream, stream_head
from voucher_ledger.projections.report_fold import report_fold
from voucher_ledger.projections.reports import FIGURES as REPORT_FIGURES
from voucher_ledger.projections.trail_fold import (
    Allotment,
    CodeFigures,
    ShareWalk,
    TrailFold,
    check_shares,
)
from voucher_ledger.signing.chain import Checked, StreamChecker
from voucher_ledger.signing.cutover import checker_for, range_reader, read_cutover
from voucher_ledger.signing.proof import IntegrityError

# The wallet events that change its credit: the ones that make its ``wallets`` row.
CREDIT_MOVEMENTS = frozenset(
    str(model.model_fields["type"].default)
    for model in (
        CreditGranted,
        GrantRevoked,
        CreditReserved,
        CreditCaptured,
        CreditReleased,
        CreditExpired,
    )
)


@dataclass
class VerifyReport:
    head: int
    checkpoints: dict[str, int]
    differences: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    # the first event that fails the signature check, if any
    integrity: IntegrityError | None = None
    # with a public key: the key's id, the cut-over, how many events had their proof checked
    signatures: tuple[str, int, int] | None = None
    # at a hub: the trail stream's head and how far its read model has applied it
    trail: tuple[int, int] | None = None

    @property
    def clean(self) -> bool:
        return not self.differences


def _compare(
    report: VerifyReport,
    table: str,
    expected: dict[str, dict[str, Any]],
    actual: dict[str, dict[str, Any]],
) -> None:
    report.checked[table] = len(expected)
    for key in sorted(expected.keys() - actual.keys()):
        report.differences.append(f"{table}[{key}]: in the stream, missing from the read model")
    for key in sorted(actual.keys() - expected.keys()):
        report.differences.append(f"{table}[{key}]: in the read model, not in the stream")
    for key in sorted(expected.keys() & actual.keys()):
        want, have = expected[key], actual[key]
        for column in want:
            if want[column] != have.get(column):
                report.differences.append(
                    f"{table}[{key}].{column}: read model {have.get(column)!r}, "
                    f"stream {want[column]!r}"
                )


async def verify(
    pool: asyncpg.Pool,
    nc: Client,
    spec: StreamsSpec,
    *,
    public_key: Ed25519PublicKey | None = None,
    trail_prefix: str | None = None,
) -> VerifyReport:
    """``trail_prefix``: at a hub with Sovereigns, its subject prefix: the trail's read model
    and the global codes' shares are checked against the trail too (``_verify_trail``)."""
    trail_rows: list[asyncpg.Record] = []
    trail_status: list[asyncpg.Record] = []
    trail_figures: dict[tuple[str, str], CodeFigures] = {}
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        if trail_prefix is not None:
            trail_rows = await conn.fetch("SELECT * FROM sovereign_redemptions")
            trail_status = await conn.fetch("SELECT * FROM sovereign_trail_status")
            trail_figures = await sovereign_trail.report_figures(conn)
        checkpoints = {
            r["projection"]: int(r["last_seq"])
            for r in await conn.fetch("SELECT projection, last_seq FROM projection_checkpoints")
        }
        vouchers = await conn.fetch("SELECT * FROM vouchers")
        redemptions = await conn.fetch("SELECT * FROM redemptions")
        wallets = await conn.fetch("SELECT * FROM wallets")
        orders = await conn.fetch("SELECT * FROM orders")
        lots = await conn.fetch("SELECT * FROM credit_lots")
        subscriptions = await conn.fetch("SELECT * FROM subscriptions")
        invoices = await conn.fetch("SELECT * FROM invoices")
        audit = await conn.fetch("SELECT seq, event_id, type FROM audit_log")
        campaign_rows = await conn.fetch("SELECT * FROM campaigns")
        campaign_codes = await conn.fetch(
            "SELECT code, campaign_id, ordinal, batch, prefix, seq FROM campaign_codes"
        )
        campaign_redemptions = await conn.fetch("SELECT * FROM campaign_redemptions")
        global_rows = await conn.fetch("SELECT * FROM global_vouchers")
        global_shares = await conn.fetch("SELECT * FROM global_shares")
        report_sums = await conn.fetch(
            "SELECT scope, "  # noqa: S608 - constant names
            + ", ".join(f"sum({f})::bigint AS {f}" for f in REPORT_FIGURES)
            + " FROM report_facts GROUP BY scope"
        )
    head = await stream_head(nc, spec)
    report = VerifyReport(head=head, checkpoints=checkpoints)
    upto = max(checkpoints.values(), default=0)
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]] = defaultdict(list)
    stream_audit: dict[str, dict[str, Any]] = {}
    checker: StreamChecker | None = None
    if public_key is not None:
        cutover = await read_cutover(nc, spec.event_stream, public_key)
        fetch = range_reader(nc, spec.event_stream)
        checker = StreamChecker(checker_for(public_key, cutover), fetch=fetch)
        upto = head  # every event is checked, the folds stop at each read model's checkpoint
        report.signatures = (checker.checker.key_id, checker.checker.cutover, 0)
    async for events in read_stream(nc, spec, 1, until_seq=upto, batch=5000):
        if checker is not None:
            try:
                await checker.check(
                    [
                        Checked(
                            e.seq, e.raw.encode(), e.envelope.aggregate, e.envelope.aggregate_id
                        )
                        for e in events
                    ]
                )
            except IntegrityError as exc:
                report.integrity = exc
                report.differences.insert(0, str(exc))
                events = [e for e in events if e.seq < exc.seq]
            key, cutover, passed = report.signatures or ("", 0, 0)
            report.signatures = (key, cutover, passed + len(events))
        for e in events:
            by_aggregate[(e.envelope.aggregate, e.envelope.aggregate_id)].append(
                RecordedEvent(seq=e.seq, envelope=e.envelope)
            )
            if e.seq <= checkpoints.get("audit", 0):
                stream_audit[str(e.seq)] = {
                    "event_id": e.envelope.event_id,
                    "type": e.envelope.event.type,
                }
        if report.integrity is not None:
            break

    _verify_vouchers(report, by_aggregate, checkpoints.get("vouchers", 0), vouchers, redemptions)
    _verify_wallets(report, by_aggregate, checkpoints.get("wallets", 0), wallets, orders, lots)
    _verify_billing(report, by_aggregate, checkpoints.get("billing", 0), subscriptions, invoices)
    _verify_campaigns(
        report,
        by_aggregate,
        checkpoints.get("campaigns", 0),
        campaign_rows,
        campaign_codes,
        campaign_redemptions,
    )
    _verify_globals(
        report, by_aggregate, checkpoints.get("global_vouchers", 0), global_rows, global_shares
    )
    _compare(
        report,
        "report_facts",
        report_fold(by_aggregate, checkpoints.get("reports", 0)),
        {r["scope"]: {f: int(r[f]) for f in REPORT_FIGURES} for r in report_sums},
    )
    _compare(
        report,
        "audit_log",
        stream_audit,
        {str(r["seq"]): {"event_id": r["event_id"], "type": r["type"]} for r in audit},
    )
    if trail_prefix is not None:
        await _verify_trail(report, nc, spec, trail_prefix, trail_rows, trail_status, trail_figures)
    return report


async def _verify_trail(
    report: VerifyReport,
    nc: Client,
    spec: StreamsSpec,
    prefix: str,
    rows: list[asyncpg.Record],
    status: list[asyncpg.Record],
    figures: dict[tuple[str, str], CodeFigures],
) -> None:
    """At a hub: (a) the trail's read model against the trail folded independently up to the
    read model's checkpoint (its rows, its status per Sovereign, its figures per Sovereign and
    code); (b) every global code's shares against the whole trail (``check_shares``). The
    trail is read before the hub's own allotments: an allotment only ever grows."""
    stream = sovereign_trail.trail_stream(prefix)
    try:
        head = await sovereign_trail.trail_head(nc, prefix)
    except JetStreamApiError as exc:
        if exc.code != 404:
            raise
        report.differences.append(f"{stream}: the hub's trail stream does not exist")
        return
    applied = max((int(r["last_seq"]) for r in status), default=0)
    report.trail = (head, applied)
    fold, walk = TrailFold(), ShareWalk()
    async for events in sovereign_trail.read_trail(nc, prefix, head):
        for e in events:
            if e.seq <= applied:
                fold.add(e)
            walk.add(e)
    _compare(
        report,
        "sovereign_redemptions",
        {f"{sov}/{rid}": row for (sov, rid), row in fold.redemptions.items()},
        {f"{r['sovereign']}/{r['redemption_id']}": dict(r) for r in rows},
    )
    _compare(
        report,
        "sovereign_trail_status",
        {s: {"last_seq": n, "events": fold.events[s]} for s, n in fold.last_seq.items()},
        {r["sovereign"]: {"last_seq": r["last_seq"], "events": r["events"]} for r in status},
    )
    _compare(
        report,
        "sovereign_report",
        {f"{s}/{c}": f.as_dict() for (s, c), f in fold.figures().items()},
        {f"{s}/{c}": f.as_dict() for (s, c), f in figures.items()},
    )
    allotments = await global_allotments(nc, spec)
    report.checked["global codes' shares"] = len(allotments)
    report.differences.extend(check_shares(walk, allotments))


async def global_allotments(nc: Client, spec: StreamsSpec) -> dict[str, Allotment]:
    """Every global code of the hub's event stream (a ``global.issued``), folded
    (``ledger.global_voucher.fold``): its cap and what each Sovereign was allotted."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        spec.layout.global_wildcard,
        stream=spec.event_stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True),
    )
    histories: dict[str, list[RecordedEvent]] = defaultdict(list)
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            for msg in await sub.fetch(min(pending, 1000), timeout=10):
                envelope = decode_envelope(msg.data)
                seq = msg.metadata.sequence.stream
                histories[envelope.aggregate_id].append(RecordedEvent(seq=seq, envelope=envelope))
                pending -= 1
    finally:
        await sub.unsubscribe()
    out: dict[str, Allotment] = {}
    for code, history in histories.items():
        state = global_voucher.fold(code, history)
        if state.issued is None:
            continue
        out[code] = Allotment(
            state.cap, {name: part.allotted for name, part in state.parts.items()}
        )
    return out


def _verify_vouchers(
    report: VerifyReport,
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]],
    upto: int,
    vouchers: list[asyncpg.Record],
    redemptions: list[asyncpg.Record],
) -> None:
    expected: dict[str, dict[str, Any]] = {}
    expected_redemptions: dict[str, dict[str, Any]] = {}
    for (aggregate, code), history in by_aggregate.items():
        if aggregate != "voucher":
            continue
        seen = [r for r in history if r.seq <= upto]
        if not seen:
            continue
        state = voucher.fold(code, seen)
        expected[code] = {
            "credit_baisa": state.credit_baisa,
            "description": state.description,
            "active": state.active,
            "revoked": state.revoked,
            "max_redemptions": state.max_redemptions,
            "times_redeemed": state.times_redeemed,
            "created_at": state.created_at,
            "updated_at": state.updated_at,
            "last_seq": state.last_seq,
            "starts_at": state.rules.starts_at,
            "expires_at": state.rules.expires_at,
            "plans": state.rules.plan_list,
            "min_order_baisa": state.rules.min_order_baisa,
            "new_organizations_only": state.rules.new_organizations_only,
            "credit_valid_for_seconds": state.rules.credit_valid_for_seconds,
            "discount": state.rules.discount.model_dump() if state.rules.discount else None,
            "share_received": state.share.received if state.share else None,
            "share_released": state.share.released if state.share else None,
            "share_pool_empty": state.share.pool_empty if state.share else None,
        }
        for r in seen:
            event = r.envelope.event
            if isinstance(event, VoucherRedeemed):
                expected_redemptions[event.redemption_id] = {
                    "code": event.code,
                    "customer_id": event.customer_id,
                    "credit_baisa": event.credit_baisa,
                    "seq": r.seq,
                    "command_id": r.envelope.command_id,
                    "reversed_seq": None,
                    "user_id": event.user_id,
                }
            elif (
                isinstance(event, RedemptionReversed)
                and event.redemption_id in expected_redemptions
            ):
                expected_redemptions[event.redemption_id]["reversed_seq"] = r.seq
    _compare(report, "vouchers", expected, {r["code"]: _voucher_row(r) for r in vouchers})
    _compare(
        report,
        "redemptions",
        expected_redemptions,
        {r["redemption_id"]: dict(r) for r in redemptions},
    )


def _verify_globals(
    report: VerifyReport,
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]],
    upto: int,
    rows: list[asyncpg.Record],
    shares: list[asyncpg.Record],
) -> None:
    """Global vouchers at the hub (issue #22) and their Sovereigns' shares by the domain fold
    (``ledger.global_voucher.fold``: what the hub's processor decides allotments by)."""
    expected: dict[str, dict[str, Any]] = {}
    expected_shares: dict[str, dict[str, Any]] = {}
    for (aggregate, code), history in by_aggregate.items():
        if aggregate != "global":
            continue
        seen = [r for r in history if r.seq <= upto]
        if not seen:
            continue
        state = global_voucher.fold(code, seen)
        view = state.view()
        expected[code] = {
            "credit_baisa": view.credit_baisa,
            "description": view.description,
            "max_redemptions": view.max_redemptions,
            "share": view.share,
            "revoked": view.revoked,
            "pool": view.pool,
            "created_at": view.created_at,
            "updated_at": view.updated_at,
            "last_seq": view.last_seq,
            **_rules_columns(view),
        }
        for name, part in state.parts.items():
            expected_shares[f"{code}/{name}"] = {
                "allotted": part.allotted,
                "released": part.released,
                "requested": part.requested,
                "answered": part.answered,
                "redeemed": part.redeemed,
                "trail_seq": part.trail_seq,
            }
    _compare(report, "global_vouchers", expected, {r["code"]: _voucher_row(r) for r in rows})
    _compare(
        report,
        "global_shares",
        expected_shares,
        {f"{r['code']}/{r['sovereign']}": dict(r) for r in shares},
    )


def _rules_columns(view: campaign.CampaignView | global_voucher.GlobalView) -> dict[str, Any]:
    """When a campaign's or a global voucher's codes redeem and for whom, as its row has them."""
    return {
        "starts_at": view.starts_at,
        "expires_at": view.expires_at,
        "plans": view.plans,
        "min_order_baisa": view.min_order_baisa,
        "new_organizations_only": view.new_organizations_only,
        "credit_valid_for_seconds": view.credit_valid_for_seconds,
        "discount": view.discount.model_dump() if view.discount else None,
    }


def _voucher_row(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for name in ("plans", "discount"):
        if out.get(name) is not None:  # jsonb, read as its JSON text
            out[name] = json.loads(out[name])
    return out


def _verify_wallets(
    report: VerifyReport,
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]],
    upto: int,
    wallets: list[asyncpg.Record],
    orders: list[asyncpg.Record],
    lots: list[asyncpg.Record],
) -> None:
    expected: dict[str, dict[str, Any]] = {}
    expected_orders: dict[str, dict[str, Any]] = {}
    expected_lots: dict[str, dict[str, Any]] = {}
    for (aggregate, customer), history in by_aggregate.items():
        if aggregate != "wallet":
            continue
        seen = [r for r in history if r.seq <= upto]
        if not seen:
            continue
        state = wallet.fold(customer, seen)
        # a wallet row exists once credit moved (not for its move to another Sovereign)
        moved = any(
            part.type in CREDIT_MOVEMENTS
            for r in seen
            for part in (
                r.envelope.event.parts()
                if isinstance(r.envelope.event, OrderPlaced)
                else [r.envelope.event]
            )
        )
        if moved:
            expected[customer] = {
                "balance_baisa": state.balance_baisa,
                "reserved_baisa": state.reserved_baisa,
            }
        for rid, lot in state.lots.items():
            expected_lots[rid] = {
                "customer_id": customer,
                "code": lot.code,
                "order_id": lot.order_id,
                "left_baisa": lot.left,
                "expires_at": lot.expires_at,
            }
        for order in state.orders.values():
            expected_orders[order.order_id] = {
                "customer_id": customer,
                "status": order.status,
                "total_baisa": order.total_baisa,
                "discount_baisa": order.discount_baisa,
                "discount_code": order.discount_code,
                "credit_applied_baisa": order.credit_applied_baisa,
                "amount_due_baisa": order.amount_due_baisa,
                "stripe_session_id": order.session_id,
                "failure_reason": order.failure_reason,
                "promo_code": order.promo_code,
                "user_id": order.user_id,
                "member_by_claim": order.member_by_claim,
                # counts for the account's ownership: opened without a claim, never failed
                "owns": not order.member_by_claim and order.failure_message is None,
            }
    _compare(report, "wallets", expected, {r["customer_id"]: dict(r) for r in wallets})
    _compare(report, "orders", expected_orders, {r["order_id"]: dict(r) for r in orders})
    _compare(report, "credit_lots", expected_lots, {r["redemption_id"]: dict(r) for r in lots})


def _verify_billing(
    report: VerifyReport,
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]],
    upto: int,
    subscriptions: list[asyncpg.Record],
    invoices: list[asyncpg.Record],
) -> None:
    """Subscriptions and invoices by a plain walk over the wallet events in stream order."""
    walk = sorted(
        (
            r
            for (aggregate, _), history in by_aggregate.items()
            if aggregate == "wallet"
            for r in history
            if r.seq <= upto
        ),
        key=lambda r: r.seq,
    )
    opened: dict[str, OrderOpened] = {}
    expected: dict[str, dict[str, Any]] = {}
    expected_invoices: dict[str, dict[str, Any]] = {}
    parts = (
        (r.envelope.occurred_at, part)
        for r in walk
        for part in (
            r.envelope.event.parts()
            if isinstance(r.envelope.event, OrderPlaced)
            else [r.envelope.event]
        )
    )
    for at, event in parts:
        if isinstance(event, OrderOpened):
            opened[event.order_id] = event
        elif isinstance(event, OrderCompleted) and event.order_id in opened:
            order = opened[event.order_id]
            sub = expected.setdefault(
                order.tenant_id, {"created_at": at, "stripe_customer_id": None}
            )
            sub.update(
                customer_id=order.user_id,
                plan_id=order.plan_id,
                amount_baisa=order.total_baisa,
                order_id=order.order_id,
                status="active",
                current_period_start=at,
                current_period_end=one_month_after(at),
                updated_at=at,
            )
        elif isinstance(event, InvoiceRecorded):
            invoice = expected_invoices.setdefault(
                event.stripe_invoice_id,
                {
                    "customer_id": event.user_id or event.customer_id,
                    "tenant_id": event.tenant_id,
                    "created_at": at,
                },
            )
            invoice.update(status=INVOICE_STATUS[event.outcome], amount_baisa=event.amount_baisa)
            if event.tenant_id in expected:
                sub = expected[event.tenant_id]
                sub["status"] = "active" if event.outcome == "paid" else "past_due"
                sub["stripe_customer_id"] = event.stripe_customer_id or sub["stripe_customer_id"]
                sub["updated_at"] = at
    _compare(report, "subscriptions", expected, {r["tenant_id"]: dict(r) for r in subscriptions})
    _compare(
        report, "invoices", expected_invoices, {r["stripe_invoice_id"]: dict(r) for r in invoices}
    )


def _verify_campaigns(
    report: VerifyReport,
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]],
    upto: int,
    campaigns: list[asyncpg.Record],
    codes: list[asyncpg.Record],
    redemptions: list[asyncpg.Record],
) -> None:
    """Campaigns by the domain fold (``ledger.campaign.fold``: its figures are what the
    processors decide by), their codes and redemptions by a plain walk over their events."""
    expected: dict[str, dict[str, Any]] = {}
    expected_codes: dict[str, dict[str, Any]] = {}
    expected_redemptions: dict[str, dict[str, Any]] = {}
    for (aggregate, campaign_id), history in by_aggregate.items():
        if aggregate != "campaign":
            continue
        seen = [r for r in history if r.seq <= upto]
        if not seen:
            continue
        view = campaign.fold(campaign_id, seen).view()
        expected[campaign_id] = {
            "name": view.name,
            "description": view.description,
            "kind": view.kind,
            "credit_baisa": view.credit_baisa,
            "max_redemptions": view.max_redemptions,
            "budget_baisa": view.budget_baisa,
            "code_max_redemptions": view.code_max_redemptions,
            "active": view.active,
            "revoked": view.revoked,
            "codes_issued": view.codes_issued,
            "times_redeemed": view.times_redeemed,
            "granted_baisa": view.granted_baisa,
            "created_at": view.created_at,
            "updated_at": view.updated_at,
            "last_seq": view.last_seq,
            **_rules_columns(view),
        }
        ordinal = 0
        for r in seen:
            event = r.envelope.event
            if isinstance(event, CampaignCodesGenerated):
                for code in event.codes:
                    expected_codes[code] = {
                        "campaign_id": campaign_id,
                        "ordinal": ordinal,
                        "batch": r.envelope.command_id,
                        "prefix": event.prefix,
                        "seq": r.seq,
                    }
                    ordinal += 1
            elif isinstance(event, CampaignCodeRedeemed):
                expected_redemptions[event.redemption_id] = {
                    "campaign_id": campaign_id,
                    "code": event.code,
                    "customer_id": event.customer_id,
                    "user_id": event.user_id,
                    "credit_baisa": event.credit_baisa,
                    "seq": r.seq,
                    "command_id": r.envelope.command_id,
                    "order_id": event.order_id,
                    "reversed_seq": None,
                }
            elif (
                isinstance(event, CampaignRedemptionReversed)
                and event.redemption_id in expected_redemptions
            ):
                expected_redemptions[event.redemption_id]["reversed_seq"] = r.seq
    _compare(report, "campaigns", expected, {r["campaign_id"]: _voucher_row(r) for r in campaigns})
    _compare(report, "campaign_codes", expected_codes, {r["code"]: dict(r) for r in codes})
    _compare(
        report,
        "campaign_redemptions",
        expected_redemptions,
        {r["redemption_id"]: dict(r) for r in redemptions},
    )
