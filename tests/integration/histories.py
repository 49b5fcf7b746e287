"""Event histories written straight to the event stream, decided by the real deciders.

:func:`write_mixed_history` produces every event type the projections know (issues, updates,
revocations and restorations, redemptions and reversals; credit-covered, card-paid, abandoned,
failed and refund-due orders with grants, reservations, captures, releases and revoked grants;
Organizations that move to another Sovereign),
interleaved across aggregates, in the proportions of a busy service: hot codes with many
redemptions, many codes with one, and checkouts on wallets. Also what the rebuild benchmark
harness replays (``VL_REBUILD_EVENTS`` events).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger import campaign, global_voucher, voucher, wallet
from voucher_ledger.ledger.campaign_codes import new_campaign_id
from voucher_ledger.ledger.commands import (
    AbandonOrder,
    AttachSession,
    ConfirmPayment,
    CreateCampaign,
    DiscountGrant,
    ExpireCredit,
    FailOrder,
    Failure,
    GenerateCampaignCodes,
    Grant,
    IssueGlobal,
    IssueVoucher,
    MoveAccount,
    ObserveSovereign,
    OpenOrder,
    PlaceOrder,
    RecallShare,
    ReceiveGlobal,
    RecordInvoice,
    RedeemVoucher,
    ReverseRedemption,
    RevokeCampaign,
    RevokeGlobal,
    RevokeVoucher,
    SettleOrder,
    WantShare,
)
from voucher_ledger.ledger.events import (
    Actor,
    DiscountTerms,
    EventEnvelope,
    GlobalIssued,
    OrderLine,
    RecordedEvent,
)
from voucher_ledger.ledger.voucher import Decided, Policy

ADMIN = Actor(sub="admin", role="superadmin")
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)


class _Writer:
    """Decides commands against in-memory states and buffers each aggregate's events; flushes
    them as atomic batches (each with the subject's expected last sequence) every ``every``
    events, so the stream interleaves aggregates."""

    def __init__(self, store: JetStreamEventStore, spec: StreamsSpec) -> None:
        self.store = store
        self.spec = spec
        self.vouchers: dict[str, voucher.VoucherState] = {}
        self.wallets: dict[str, wallet.WalletState] = {}
        self.campaigns: dict[str, campaign.CampaignState] = {}
        self.globals: dict[str, global_voucher.GlobalState] = {}
        self.pending: dict[str, list[EventEnvelope]] = {}
        self.last_seq: dict[str, int] = {}
        self.local: dict[str, int] = {}
        self.written = 0
        self.buffered = 0
        self.clock = 0

    def _envelope(self, aggregate: str, key: str, event: Any, command_id: str) -> EventEnvelope:
        self.clock += 1
        return EventEnvelope(
            event_id=str(uuid.uuid4()),
            aggregate=aggregate,  # type: ignore[arg-type]
            aggregate_id=key,
            occurred_at=EPOCH + timedelta(milliseconds=self.clock),
            actor=ADMIN,
            command_id=command_id,
            event=event,
        )

    def _record(self, subject: str, env: EventEnvelope) -> RecordedEvent:
        self.pending.setdefault(subject, []).append(env)
        self.buffered += 1
        self.local[subject] = self.local.get(subject, 0) + 1
        return RecordedEvent(seq=self.local[subject], envelope=env)

    def voucher(self, code: str, command: Any) -> bool:
        state = self.vouchers.get(code) or voucher.initial_state(code)
        command_id = f"cmd-{uuid.uuid4().hex}"
        outcome = voucher.handle(state, command, command_id, Policy())
        if not isinstance(outcome, Decided):
            return False
        subject = self.spec.layout.voucher_subject(code)
        for event in outcome.events:
            env = self._envelope("voucher", code, event, command_id)
            state = voucher.evolve(state, self._record(subject, env), command.fingerprint())
        self.vouchers[code] = state
        return True

    def campaign(self, campaign_id: str, command: Any) -> bool:
        """A campaign's command, or a command for one of its codes (issue #21)."""
        state = self.campaigns.get(campaign_id) or campaign.initial_state(campaign_id)
        command_id = f"cmd-{uuid.uuid4().hex}"
        outcome = campaign.handle(state, command, command_id, Policy())
        if not isinstance(outcome, Decided):
            return False
        subject = self.spec.layout.campaign_subject(campaign_id)
        for event in outcome.events:
            env = self._envelope("campaign", campaign_id, event, command_id)
            env = env.model_copy(update={"command_fingerprint": command.fingerprint()})
            state = campaign.evolve(state, self._record(subject, env), command.fingerprint())
        self.campaigns[campaign_id] = state
        return True

    def global_(self, code: str, command: Any) -> bool:
        """A global voucher's command at the hub (issue #22)."""
        state = self.globals.get(code) or global_voucher.initial_state(code)
        command_id = f"cmd-{uuid.uuid4().hex}"
        outcome = global_voucher.handle(state, command, command_id, Policy())
        if not isinstance(outcome, Decided):
            return False
        subject = self.spec.layout.global_subject(code)
        for event in outcome.events:
            env = self._envelope("global", code, event, command_id)
            env = env.model_copy(update={"command_fingerprint": command.fingerprint()})
            state = global_voucher.evolve(state, self._record(subject, env), command.fingerprint())
        self.globals[code] = state
        return True

    def observe(self, code: str, sovereign: str, trail_seq: int) -> None:
        """The hub's allocator reports what the trail shows of ``sovereign``: three more
        redemptions (within its share), for a recall not answered yet, the unused slots
        asked for given back, and now and then a demand signal (``wanted_total``)."""
        part = self.globals[code].part(sovereign)
        redeemed = min(part.allotted - part.released, part.redeemed + 3)
        unused = part.allotted - part.released - redeemed
        give = min(unused, max(0, part.requested - part.answered))
        command = ObserveSovereign(
            code=code,
            sovereign=sovereign,
            trail_seq=trail_seq,
            redeemed=redeemed,
            released_total=part.released + give,
            answered_total=part.requested,
            wanted_total=part.wanted + (1 if trail_seq % 10 == 0 else 0),
        )
        assert self.global_(code, command), command

    def wallet(self, customer: str, command: Any) -> None:
        state = self.wallets.get(customer) or wallet.initial_state(customer)
        command_id = f"cmd-{uuid.uuid4().hex}"
        if isinstance(command, MoveAccount):  # decided by the exporting job, not on the bus
            outcome: Any = Decided(wallet.decide_move(state, command))
        else:
            outcome = wallet.handle(state, command, command_id)
        assert isinstance(outcome, Decided), (command, outcome)
        subject = self.spec.layout.wallet_subject(customer)
        for event in outcome.events:
            env = self._envelope("wallet", customer, event, command_id)
            state = wallet.evolve(state, self._record(subject, env), command.fingerprint())
        self.wallets[customer] = state

    async def _append(self, subject: str, envs: list[EventEnvelope]) -> None:
        for start in range(0, len(envs), 1000):
            chunk = envs[start : start + 1000]
            recorded = await self.store.append(subject, self.last_seq.get(subject, 0), chunk)
            self.last_seq[subject] = recorded[-1].seq
            self.written += len(chunk)

    async def flush(self) -> None:
        pending = list(self.pending.items())
        self.pending.clear()
        self.buffered = 0
        for start in range(0, len(pending), 16):  # subjects are independent: 16 at a time
            await asyncio.gather(*(self._append(s, e) for s, e in pending[start : start + 16]))


# Every read-model table and the column that orders its rows (for row-for-row comparisons).
ROW_KEYS = {
    "vouchers": "code",
    "redemptions": "redemption_id",
    "wallets": "customer_id",
    "credit_entries": "seq, kind",  # one event (order.placed) may hold several movements
    "orders": "order_id",
    "credit_lots": "redemption_id",
    "subscription_orders": "order_id",
    "subscriptions": "tenant_id",
    "invoices": "stripe_invoice_id",
    "campaigns": "campaign_id",
    "campaign_codes": "code",
    "campaign_redemptions": "redemption_id",
    "report_facts": "seq, n",
    "report_grants": "customer_id, redemption_id",
    "report_holds": "order_id",
    "report_orders": "order_id",
    "global_vouchers": "code",
    "global_shares": "code, sovereign",
    "audit_log": "seq",
}


def _order(
    customer: str, order_id: str, total: int, promo: str | None, tenant: str | None = None
) -> OpenOrder:
    return OpenOrder(
        customer_id=customer,
        order_id=order_id,
        tenant_id=tenant or f"tenant-{order_id}",
        plan_id="pro",
        apps=["crm", "pos"],
        addons=["sms"],
        promo_code=promo,
        lines=[
            OrderLine(kind="plan", id="pro", name="Pro", amount_baisa=total - 500),
            OrderLine(kind="addon", id="sms", name="SMS", amount_baisa=500),
        ],
        total_baisa=total,
    )


def _invoice(customer: str, order_id: str, tenant: str, outcome: str) -> RecordInvoice:
    return RecordInvoice(
        customer_id=customer,
        order_id=order_id,
        tenant_id=tenant,
        user_id=f"user-{customer}" if outcome == "paid" else None,
        stripe_invoice_id=f"in_{order_id}",
        stripe_customer_id=f"cus_{customer}" if outcome == "paid" else None,
        outcome=outcome,  # type: ignore[arg-type]
        amount_baisa=3000,
        currency="omr",
        period_start=EPOCH,
        period_end=EPOCH + timedelta(days=30),
        pdf_url=None if outcome == "payment_failed" else f"https://files.example/{order_id}.pdf",
    )


async def _checkouts(w: _Writer, n: int, code: str) -> None:
    """One customer's orders through every flow, on the wallet (and the voucher ``code``)."""
    c = f"cust-{n}-{uuid.uuid4().hex[:6]}"
    flow = n % 5
    oid = f"{c}-o1"
    w.voucher(code, RedeemVoucher(code=code, customer_id=c))
    rid = w.vouchers[code].redemptions[c].redemption_id
    # every other grant expires (issue #20), far ahead: spent first, tracked as a lot
    lasts = datetime(2099, 1, 1, tzinfo=UTC) if n % 2 == 0 else None
    grant = Grant(redemption_id=rid, code=code, amount_baisa=2000, expires_at=lasts)
    if flow == 0:  # covered by the credit: granted, reserved, captured, completed
        w.wallet(c, _order(c, oid, 2000, code))
        w.wallet(c, SettleOrder(customer_id=c, order_id=oid, grant=grant, payment_available=True))
    else:  # credit does not cover it: payment requested, a Stripe session
        w.wallet(c, _order(c, oid, 5000, code))
        w.wallet(c, SettleOrder(customer_id=c, order_id=oid, grant=grant, payment_available=True))
        w.wallet(
            c,
            AttachSession(
                customer_id=c,
                order_id=oid,
                session_id=f"cs_{oid}",
                session_url=f"https://pay.example/{oid}",
            ),
        )
        if flow == 1:  # paid by card: captured, completed; its invoice failed, then was paid
            w.wallet(
                c,
                ConfirmPayment(
                    customer_id=c, order_id=oid, session_id=f"cs_{oid}", amount_paid_baisa=3000
                ),
            )
            for outcome in ("payment_failed", "paid", "paid", "payment_failed"):  # twice: once
                w.wallet(c, _invoice(c, oid, f"tenant-{oid}", outcome))
        elif flow == 2:  # abandoned (released); every other one paid anyway: refund due
            w.wallet(c, AbandonOrder(customer_id=c, order_id=oid, reason="expired"))
            # an invoice of an Organization without a subscription
            w.wallet(c, _invoice(c, oid, f"tenant-{oid}", "payment_failed"))
            if n % 2 == 0:
                w.wallet(
                    c,
                    ConfirmPayment(
                        customer_id=c, order_id=oid, session_id=f"cs_{oid}", amount_paid_baisa=3000
                    ),
                )
        else:  # failed: released, grant revoked, the redemption reversed
            w.wallet(
                c,
                FailOrder(customer_id=c, order_id=oid, reason="card_declined", message="declined"),
            )
            w.voucher(code, ReverseRedemption(code=code, customer_id=c, reason="checkout"))
    # a second, cheap order paid from what is left (or by card), for the same Organization (a
    # completed one changes its subscription); every third one by another user whose token
    # names the Organization (issue #20: order.opened v2, user_id and member_by_claim), who
    # also redeems a code for it (voucher.redeemed v2, user_id)
    oid2 = f"{c}-o2"
    if n % 3 == 0:
        member = f"member-{c}"
        opened = _order(c, oid2, 1000, None, tenant=f"tenant-{oid}").model_copy(
            update={"user_id": member, "member_by_claim": True}
        )
        w.wallet(c, opened)
        w.voucher(code, RedeemVoucher(code=code, customer_id=f"org2-{c}", user_id=member))
    else:
        w.wallet(c, _order(c, oid2, 1000, None, tenant=f"tenant-{oid}"))
    if n % 6 == 3:  # a grant already expired when it settles: its credit expires (once)
        oid3, lapsed = f"{c}-o3", f"lapsed-{c}"
        w.wallet(c, _order(c, oid3, 1000, None))
        expired = Grant(
            redemption_id=lapsed,
            code=code,
            amount_baisa=1500,
            expires_at=datetime(2020, 1, 1, tzinfo=UTC),
        )
        w.wallet(
            c, SettleOrder(customer_id=c, order_id=oid3, grant=expired, payment_available=True)
        )
        w.wallet(c, ExpireCredit(customer_id=c, order_id=oid3, redemption_id=lapsed))
        w.wallet(c, ExpireCredit(customer_id=c, order_id=oid3, redemption_id=lapsed))
    w.wallet(c, SettleOrder(customer_id=c, order_id=oid2, payment_available=True))
    # Issue #19's checkout: the redemption carries the order, the wallet places and settles it
    # in one event (order.placed): covered by the credit, or awaiting payment; every fourth
    # customer's order never reaches the wallet, which recovery records failed.
    oid4 = f"{c}-o4"
    placed = _placed(c, oid4, 1500 if n % 2 == 0 else 4000, code)
    w.voucher(
        code,
        RedeemVoucher(
            code=code,
            customer_id=f"org4-{c}",
            user_id=f"user4-{c}",
            plan_id="pro",
            order_total_baisa=placed.total_baisa,
            order=placed.draft(),
        ),
    )
    rid4 = w.vouchers[code].redemptions[f"org4-{c}"].redemption_id
    if n % 4 == 3:
        lost = placed.model_copy(
            update={"failure": Failure(reason="interrupted", message="rolled back")}
        )
        w.wallet(c, lost)
    else:
        grant4 = Grant(redemption_id=rid4, code=code, amount_baisa=2000)
        update: dict[str, object] = {"grant": grant4}
        if n % 3 == 2:  # issue #21: a running discount (20 % off add-ons for three months)
            update["discount"] = DiscountGrant(
                redemption_id=rid4,
                code=code,
                terms=DiscountTerms(
                    kind="percent_off", percent_off=20, applies_to=["addons"], duration="P3M"
                ),
            )
        w.wallet(c, placed.model_copy(update=update))
        if n % 3 == 2:  # a later order of the Organization gets the running discount
            w.wallet(c, _placed(c, f"{c}-o5", 2500, code).model_copy(update={"promo_code": None}))

    if n % 7 == 1:  # the Organization moves to another Sovereign (issue #22): its last event
        w.wallet(
            c,
            MoveAccount(
                customer_id=c,
                destination="other.sovereign.example" if n % 2 else None,
                bundle_digest=uuid.uuid4().hex * 2,
                wallet_events=w.local[w.spec.layout.wallet_subject(c)],
                redemption_events=1,
                trail_upto=w.written + w.buffered,
            ),
        )


def _placed(customer: str, order_id: str, total: int, promo: str) -> PlaceOrder:
    opened = _order(customer, order_id, total, promo)
    return PlaceOrder(**opened.model_dump(exclude={"type"}), payment_available=True)


async def write_mixed_history(
    store: JetStreamEventStore, spec: StreamsSpec, events: int, *, flush_every: int = 2000
) -> int:
    """At least ``events`` events of every type; returns how many were written."""
    w = _Writer(store, spec)
    tag = uuid.uuid4().hex[:6].upper()
    hot = [f"HOT-{tag}-{i}" for i in range(3)]
    for code in hot:
        w.voucher(code, IssueVoucher(code=code, credit_baisa=2000, max_redemptions=0))
    # Campaigns (issue #21): one whose codes are redeemed (and some given back) as the stream
    # goes, and one revoked at the end.
    cid, gone = new_campaign_id(os.urandom), new_campaign_id(os.urandom)
    for campaign_id in (cid, gone):
        w.campaign(
            campaign_id,
            CreateCampaign(
                campaign_id=campaign_id,
                name=f"campaign {campaign_id}",
                credit_baisa=1000,
                max_redemptions=1_000_000,
                budget_baisa=10**12,
                starts_at=datetime(2020, 1, 1, tzinfo=UTC),
                plans=["pro", "business"] if campaign_id == gone else None,
            ),
        )
        w.campaign(
            campaign_id, GenerateCampaignCodes(campaign_id=campaign_id, count=7, prefix="MIX")
        )
    # a campaign of discount codes (issue #21: campaign.created with discount terms)
    off = new_campaign_id(os.urandom)
    w.campaign(
        off,
        CreateCampaign(
            campaign_id=off,
            name="half off plans",
            kind="percent_off",
            discount=DiscountTerms(kind="percent_off", percent_off=50, applies_to=["plans"]),
            credit_baisa=0,
            max_redemptions=100,
        ),
    )
    w.campaign(off, GenerateCampaignCodes(campaign_id=off, count=3, prefix="OFF"))
    # Global vouchers at the hub (issue #22): one whose Sovereigns redeem their shares (topped
    # up, recalled, given back) as the stream goes, and a discount one revoked at the end.
    shared, dropped = f"GLOBAL-{tag}", f"GOFF-{tag}"
    sovereigns = ["muscat", "salalah"]
    assert w.global_(
        shared,
        IssueGlobal(
            code=shared,
            terms=IssueVoucher(code=shared, credit_baisa=3000, max_redemptions=400),
            sovereigns=sovereigns,
        ),
    )
    assert w.global_(
        dropped,
        IssueGlobal(
            code=dropped,
            terms=IssueVoucher(
                code=dropped,
                credit_baisa=0,
                max_redemptions=10,
                discount=DiscountTerms(kind="percent_off", percent_off=10),
                expires_at=datetime(2099, 1, 1, tzinfo=UTC),
            ),
            sovereigns=["muscat"],
        ),
    )
    # And, as a Sovereign, a global code of another hub: its share received, redeemed, topped
    # up, recalled (voucher.share_received / voucher.share_released) and revoked at the end.
    held = f"HELD-{tag}"
    terms = GlobalIssued(
        code=held, credit_baisa=2500, description="global", max_redemptions=1000, sovereigns=[]
    )

    def receive(allotted: int, requested: int, seq: int, revoked: bool = False) -> bool:
        return w.voucher(
            held,
            ReceiveGlobal(
                code=held,
                definition=terms,
                allotted_total=allotted,
                requested_total=requested,
                revoked=revoked,
                pool_empty=False,
                hub_seq=seq,
            ),
        )

    assert receive(20, 0, 1)
    campaign_codes: list[str] = []
    n = 0
    while w.written + w.buffered < events:
        n += 1
        # a hot code's redemptions (half the stream)
        code = hot[n % len(hot)]
        for i in range(8):
            w.voucher(code, RedeemVoucher(code=code, customer_id=f"h{n}-{i}"))
        # a code of its own: issued, redeemed once; some updated, revoked, restored
        own = f"ONE-{tag}-{n}"
        if n % 7 == 3:  # a discount voucher (issue #21: voucher.issued v3)
            w.voucher(
                own,
                IssueVoucher(
                    code=own,
                    credit_baisa=0,
                    description=f"#{n}",
                    discount=DiscountTerms(kind="amount_off", amount_off_baisa=2000),
                ),
            )
        else:
            w.voucher(own, IssueVoucher(code=own, credit_baisa=1500, description=f"#{n}"))
        w.voucher(own, RedeemVoucher(code=own, customer_id=f"o{n}"))
        if n % 4 == 0:  # a window that holds now (issue #20: voucher.issued v2)
            w.voucher(
                own,
                IssueVoucher(
                    code=own,
                    credit_baisa=1700,
                    max_redemptions=5,
                    starts_at=datetime(2020, 1, 1, tzinfo=UTC),
                    expires_at=datetime(2099, 1, 1, tzinfo=UTC),
                ),
            )
        if n % 6 == 0:
            w.voucher(own, ReverseRedemption(code=own, customer_id=f"o{n}"))
            if n % 12 == 0:  # the same customer redeems the code again
                assert w.voucher(own, RedeemVoucher(code=own, customer_id=f"o{n}"))
        if n % 5 == 0:
            w.voucher(own, RevokeVoucher(code=own))
            if n % 10 == 0:  # restored with eligibility rules
                w.voucher(
                    own,
                    IssueVoucher(
                        code=own,
                        credit_baisa=1800,
                        plans=["business"],
                        min_order_baisa=3000,
                        new_organizations_only=True,
                    ),
                )
        # a campaign code's redemption; every fourth given back; new codes as they run out
        if not campaign_codes:
            w.campaign(cid, GenerateCampaignCodes(campaign_id=cid, count=40))
            codes = w.campaigns[cid].codes
            campaign_codes = sorted(c for c, e in codes.items() if not e.times_redeemed)
        taken = campaign_codes.pop()
        assert w.campaign(cid, RedeemVoucher(code=taken, customer_id=f"cc{n}", user_id=f"cu{n}"))
        if n % 4 == 0:
            assert w.campaign(
                cid, ReverseRedemption(code=taken, customer_id=f"cc{n}", reason="checkout")
            )
        # the hub hears of a Sovereign's redemptions of the global code; now and then it
        # asks the other for slots back
        w.observe(shared, sovereigns[n % 2], n)
        if n % 13 == 0:
            w.global_(shared, RecallShare(code=shared, sovereign=sovereigns[(n + 1) % 2], slots=5))
        w.voucher(held, RedeemVoucher(code=held, customer_id=f"g{n}"))
        if n % 9 == 0:  # topped up, and asked for a few slots back
            receive(20 + n, n // 9, n + 1)
        # a checkout (a third of the stream)
        await _checkouts(w, n, hot[(n + 1) % len(hot)])
        if w.buffered >= flush_every:
            await w.flush()
    w.campaign(gone, RevokeCampaign(campaign_id=gone))
    assert w.global_(dropped, RevokeGlobal(code=dropped))
    # its customers use up the share; the first one refused makes the Sovereign say it wants
    # slots (voucher.share_wanted), once: the next refusal adds nothing
    k = 0
    while w.voucher(held, RedeemVoucher(code=held, customer_id=f"gx{k}")):
        k += 1
    assert w.voucher(held, WantShare(code=held))
    share = w.vouchers[held].share
    assert share is not None
    assert share.wanting
    assert w.voucher(held, WantShare(code=held))
    assert w.vouchers[held].share == share
    # revoked at the hub: the rest of the share goes back
    assert receive(share.received, share.requested, share.hub_seq + 1, revoked=True)
    await w.flush()
    return w.written
