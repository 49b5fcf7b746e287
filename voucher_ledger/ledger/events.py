"""Events: frozen pydantic models with a ``type`` tag and a schema ``version``, in an envelope.

Two aggregates write events: vouchers (``<prefix>.events.voucher.<CODE>``) and accounts' wallets
(``<prefix>.events.wallet.<ACCOUNT>``, credit movements, the account's orders and its Stripe
invoices). An account is an Organization (the checkout's ``tenant_id``); its events' ``customer_id``
names it.

Wire format (the JSON body of a JetStream message)::

    {"event_id": "...", "aggregate": "voucher", "aggregate_id": "CODE",
     "occurred_at": "2026-11-21T12:00:00Z", "actor": {"sub": "...", "role": "..."},
     "command_id": "...", "event": {"type": "voucher.redeemed", "version": 1, ...},
     "proof": {"prev": "...", "i": 0, "n": 1, "key": "...", "j": 0, "m": 1, "path": "...",
               "sig": "..."}}

``proof`` (on every event from the signing cut-over on) is the ledger's proof that it wrote the
event: chained per aggregate, one signature per append, carried by the last event of each
aggregate in the append (:class:`SignedProof`; the others carry :class:`ChainProof`):
``voucher_ledger.signing.proof``.

Old versions are upcast on read by :data:`UPCASTERS` before validation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticUndefined
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _ByOwnUser(Frozen):
    """An event naming the user beside the account: built without ``user_id`` (a test, an
    old producer's shape), the account's own user, as before issue #20."""

    @model_validator(mode="before")
    @classmethod
    def _own_user(cls, data: Any) -> Any:
        if isinstance(data, dict) and "user_id" not in data and "customer_id" in data:
            return {**data, "user_id": data["customer_id"]}
        return data


class Actor(Frozen):
    """Who caused a change: the JWT subject and role (or a system component)."""

    sub: str
    role: str


SYSTEM_ACTOR = Actor(sub="system", role="system")


class DiscountTerms(Frozen):
    """What a discount voucher gives (issue #21): ``percent_off`` (1-100) of the lines it
    applies to, or ``amount_off_baisa`` off them (at most their total); ``applies_to`` the
    order lines of these kinds (None: every line); for ``duration`` ``once`` (the order that
    redeems it), an ISO 8601 duration (every checkout of the Organization within that time after
    the redemption, e.g. ``P3M``) or ``forever``."""

    kind: Literal["percent_off", "amount_off"]
    percent_off: int | None = None
    amount_off_baisa: int | None = None
    applies_to: list[Literal["plans", "addons", "apps"]] | None = None
    duration: str = "once"


class VoucherIssued(Frozen):
    """A voucher was created, updated (full replace) or restored from revocation (upsert).

    Version 2 adds when the code redeems (``starts_at`` inclusive, ``expires_at`` exclusive;
    None: no bound) and who may redeem it (``plans``: the checkout's plan one of these, None:
    any; ``min_order_baisa``: the order total before credit at least this, 0: any;
    ``new_organizations_only``: an Organization without a completed order). A v1 event is
    upcast with these defaults: it redeemed always, for anyone. Version 3 adds ``discount``: a
    discount voucher's terms (its ``credit_baisa`` is 0); None, and every v1/v2 voucher: a
    credit voucher."""

    type: Literal["voucher.issued"] = "voucher.issued"
    version: Literal[3] = 3
    code: str
    credit_baisa: int
    description: str
    active: bool
    max_redemptions: int
    change: Literal["created", "updated", "restored"]
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: list[str] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    # the credit a redemption grants expires this long after it (None: never)
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None


class VoucherRevoked(Frozen):
    """Soft delete: the code stops resolving; its history and redemption count are kept."""

    type: Literal["voucher.revoked"] = "voucher.revoked"
    version: Literal[1] = 1
    code: str


class OrderLine(Frozen):
    kind: Literal["plan", "addon"]
    id: str
    name: str
    amount_baisa: int


class OrderDraft(Frozen):
    """A priced order as a checkout places it: carried by its voucher redemption (so that a
    checkout stopped between the redemption and the wallet can be recorded and compensated
    from the redemption alone) and placed in the wallet as :class:`OrderOpened`."""

    order_id: str
    tenant_id: str
    user_id: str
    member_by_claim: bool = False
    plan_id: str
    apps: list[str]
    addons: list[str]
    lines: list[OrderLine]
    total_baisa: int


class VoucherRedeemed(_ByOwnUser):
    """An account (``customer_id``: the Organization, the checkout's tenant_id) took one
    redemption slot and earned ``credit_baisa`` of credit; ``user_id`` is the login that
    redeemed it (one redemption per account and one per user per code). Version 2 adds
    ``user_id``; a v1 redemption was a user's own (its ``customer_id``). Version 3 adds
    ``order``: the priced order the checkout redeemed for, which its account's wallet places
    next (None: a redemption outside a checkout, and every v1/v2 one, whose order the wallet
    opened before the redemption)."""

    type: Literal["voucher.redeemed"] = "voucher.redeemed"
    version: Literal[3] = 3
    code: str
    customer_id: str
    redemption_id: str
    credit_baisa: int
    user_id: str
    # when the credit this redemption grants expires (the voucher's credit_valid_for after
    # the redemption); None: never
    credit_expires_at: datetime | None = None
    order: OrderDraft | None = None


class RedemptionReversed(Frozen):
    """A redemption was undone (checkout compensation or admin); the slot is free again."""

    type: Literal["voucher.redemption_reversed"] = "voucher.redemption_reversed"
    version: Literal[1] = 1
    code: str
    customer_id: str
    redemption_id: str
    reason: str


class _WalletEvent(Frozen):
    # The account: the Organization the checkout pays from and credits to (its tenant_id);
    # on events written before issue #20, a user's JWT sub (per-user wallets).
    customer_id: str


class LotShare(Frozen):
    """The part of a movement that came from (or went back to) one expiring grant."""

    redemption_id: str
    amount_baisa: int


class CreditGranted(_WalletEvent):
    """Credit earned by a voucher redemption. At most once per redemption id. Version 2 adds
    ``expires_at``: from that instant its unspent remainder is not spendable and leaves the
    account (``wallet.credit_expired``); None (and every v1 grant): it never expires."""

    type: Literal["wallet.credit_granted"] = "wallet.credit_granted"
    version: Literal[2] = 2
    redemption_id: str
    code: str
    order_id: str
    amount_baisa: int
    expires_at: datetime | None = None


class GrantRevoked(_WalletEvent):
    """A grant taken back because its checkout failed; the voucher slot is given back too.
    Version 2 adds ``lots``: the parts taken from expiring grants (the rest from credit that
    never expires)."""

    type: Literal["wallet.grant_revoked"] = "wallet.grant_revoked"
    version: Literal[2] = 2
    redemption_id: str
    code: str
    order_id: str
    amount_baisa: int
    reason: str
    lots: list[LotShare] = Field(default_factory=list)


class CreditReserved(_WalletEvent):
    """Credit held for an order: no longer available, not spent yet. Version 2 adds ``lots``:
    the parts taken from expiring grants, soonest-expiring first (the rest from credit that
    never expires)."""

    type: Literal["wallet.credit_reserved"] = "wallet.credit_reserved"
    version: Literal[2] = 2
    order_id: str
    amount_baisa: int
    lots: list[LotShare] = Field(default_factory=list)


class CreditCaptured(_WalletEvent):
    """An order's reservation spent (the order was paid)."""

    type: Literal["wallet.credit_captured"] = "wallet.credit_captured"
    version: Literal[1] = 1
    order_id: str
    amount_baisa: int


class CreditReleased(_WalletEvent):
    """An order's reservation returned to the available credit (payment abandoned or failed).
    Version 2 adds ``lots``: the parts going back to the expiring grants they came from."""

    type: Literal["wallet.credit_released"] = "wallet.credit_released"
    version: Literal[2] = 2
    order_id: str
    amount_baisa: int
    reason: str
    lots: list[LotShare] = Field(default_factory=list)


class CreditExpired(_WalletEvent):
    """An expiring grant's unspent remainder left the account at its ``expires_at`` (or when
    credit reserved from it came back after that). ``order_id``: the grant's order."""

    type: Literal["wallet.credit_expired"] = "wallet.credit_expired"
    version: Literal[1] = 1
    redemption_id: str
    code: str
    order_id: str
    amount_baisa: int
    expires_at: datetime


class OrderOpened(_WalletEvent, _ByOwnUser):
    """A checkout started: the priced order, before any credit or payment. ``user_id``: the
    login that opened it; ``member_by_claim``: its token named the Organization (else it was
    let in as the account's owner, the user of its first order that did not fail). Version 2
    adds both; a v1 order was opened by its wallet's own user. Version 3 adds the discount the
    order got (issue #21; only as a part of ``order.placed``): ``discount_baisa`` off its
    ``total_baisa`` before any credit, by the code ``discount_code``, ``line_discounts`` per
    line (in the order of ``lines``; empty: none)."""

    type: Literal["order.opened"] = "order.opened"
    version: Literal[3] = 3
    order_id: str
    tenant_id: str
    plan_id: str
    apps: list[str]
    addons: list[str]
    promo_code: str | None
    lines: list[OrderLine]
    total_baisa: int
    user_id: str
    member_by_claim: bool = False
    discount_baisa: int = 0
    discount_code: str | None = None
    line_discounts: list[int] = Field(default_factory=list)


class OrderPaymentRequested(_WalletEvent):
    """Credit did not cover the total: ``amount_due_baisa`` is to be paid through Stripe."""

    type: Literal["order.payment_requested"] = "order.payment_requested"
    version: Literal[1] = 1
    order_id: str
    credit_applied_baisa: int
    amount_due_baisa: int


class OrderSessionCreated(_WalletEvent):
    type: Literal["order.session_created"] = "order.session_created"
    version: Literal[1] = 1
    order_id: str
    session_id: str
    session_url: str


class OrderCompleted(_WalletEvent):
    type: Literal["order.completed"] = "order.completed"
    version: Literal[1] = 1
    order_id: str
    paid_by_credit: bool
    credit_applied_baisa: int
    amount_paid_baisa: int
    stripe_session_id: str | None = None


class OrderFailed(_WalletEvent):
    """The checkout did not go through; whatever it reserved or granted was given back."""

    type: Literal["order.failed"] = "order.failed"
    version: Literal[1] = 1
    order_id: str
    reason: str
    message: str
    # True when the voucher redemption of this checkout (if any) is to be reversed.
    release_slot: bool


class OrderAbandoned(_WalletEvent):
    """The Stripe session expired or its payment failed: the reserved credit was released.
    The redemption stays (upstream's choice for abandoned carts)."""

    type: Literal["order.abandoned"] = "order.abandoned"
    version: Literal[1] = 1
    order_id: str
    reason: str


class OrderRefundDue(_WalletEvent):
    """Stripe reported a payment for an order that had already failed or been abandoned: the
    money is recorded, never dropped, and an operator refunds it."""

    type: Literal["order.refund_due"] = "order.refund_due"
    version: Literal[1] = 1
    order_id: str
    stripe_session_id: str
    amount_paid_baisa: int


class AppliedDiscount(Frozen):
    """The discount an order got: from the redemption ``redemption_id`` of ``code``,
    ``amount_baisa`` in all, ``lines`` per order line (in the order's line order)."""

    redemption_id: str
    code: str
    amount_baisa: int
    lines: list[int]


class GrantedDiscount(Frozen):
    """A running discount an order's redemption started: ``terms`` apply to the
    Organization's checkouts until ``ends_at`` (None: forever)."""

    redemption_id: str
    code: str
    terms: DiscountTerms
    ends_at: datetime | None = None


class PlacedGrant(Frozen):
    """The credit an order's redemption earned, granted as the order was placed."""

    redemption_id: str
    code: str
    amount_baisa: int
    expires_at: datetime | None = None


class OrderPlaced(_WalletEvent):
    """A checkout's order placed and settled in one decision (issue #19), as ONE event: one
    message, a plain publish, where the same facts as separate events would be an atomic batch
    (which a one-replica file stream stages on disk: several milliseconds per batch).

    It means exactly the events :meth:`parts` lists, in that order: the order opened
    (``order.opened``), the redemption's credit granted (``grant``: ``wallet.credit_granted``),
    ``credit_applied_baisa`` reserved (``wallet.credit_reserved``, from ``lots``), and then
    either, with nothing left to pay, that credit captured and the order completed on credit
    alone, or ``amount_due_baisa`` asked of Stripe (``order.payment_requested``). Readers that
    know the parts can read it as them (the read models do)."""

    type: Literal["order.placed"] = "order.placed"
    version: Literal[1] = 1
    order_id: str
    tenant_id: str
    plan_id: str
    apps: list[str]
    addons: list[str]
    promo_code: str | None
    lines: list[OrderLine]
    total_baisa: int
    user_id: str
    member_by_claim: bool = False
    grant: PlacedGrant | None = None
    credit_applied_baisa: int = 0
    lots: list[LotShare] = Field(default_factory=list)
    amount_due_baisa: int = 0
    # issue #21: the one discount applied (before credit), and a running discount this order's
    # redemption started (for later orders; ``once`` discounts start none)
    discount: AppliedDiscount | None = None
    discount_granted: GrantedDiscount | None = None

    def parts(self) -> list[WalletEventT]:
        who, order_id, applied = self.customer_id, self.order_id, self.credit_applied_baisa
        out: list[WalletEventT] = [
            OrderOpened(
                customer_id=who,
                order_id=order_id,
                tenant_id=self.tenant_id,
                plan_id=self.plan_id,
                apps=self.apps,
                addons=self.addons,
                promo_code=self.promo_code,
                lines=self.lines,
                total_baisa=self.total_baisa,
                user_id=self.user_id,
                member_by_claim=self.member_by_claim,
                discount_baisa=self.discount.amount_baisa if self.discount else 0,
                discount_code=self.discount.code if self.discount else None,
                line_discounts=self.discount.lines if self.discount else [],
            )
        ]
        grant = self.grant
        if grant is not None:
            out.append(
                CreditGranted(
                    customer_id=who,
                    redemption_id=grant.redemption_id,
                    code=grant.code,
                    order_id=order_id,
                    amount_baisa=grant.amount_baisa,
                    expires_at=grant.expires_at,
                )
            )
        if applied > 0:
            out.append(
                CreditReserved(
                    customer_id=who, order_id=order_id, amount_baisa=applied, lots=self.lots
                )
            )
        if self.amount_due_baisa == 0:
            if applied > 0:
                out.append(CreditCaptured(customer_id=who, order_id=order_id, amount_baisa=applied))
            out.append(
                OrderCompleted(
                    customer_id=who,
                    order_id=order_id,
                    paid_by_credit=True,
                    credit_applied_baisa=applied,
                    amount_paid_baisa=0,
                )
            )
        else:
            out.append(
                OrderPaymentRequested(
                    customer_id=who,
                    order_id=order_id,
                    credit_applied_baisa=applied,
                    amount_due_baisa=self.amount_due_baisa,
                )
            )
        return out


class InvoiceRecorded(_WalletEvent):
    """Stripe reported an invoice of the Organization (the account, ``customer_id``) paid, or
    its payment failed (``invoice.paid`` / ``invoice.payment_failed``). Once per invoice and
    outcome; a failure after the invoice was paid is not recorded. ``user_id``: the login
    whose checkout it bills (the invoice's metadata), when it names one."""

    type: Literal["invoice.recorded"] = "invoice.recorded"
    version: Literal[1] = 1
    tenant_id: str
    user_id: str | None = None
    stripe_invoice_id: str
    stripe_customer_id: str | None
    outcome: Literal["paid", "payment_failed"]
    amount_baisa: int  # paid: what was paid; payment_failed: what is due
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    pdf_url: str | None


class AccountMoved(_WalletEvent):
    """The Organization moved to another Sovereign (``voucher-ledger org export``): its
    history up to this event left in the signed bundle whose SHA-256 is ``bundle_digest``
    (``wallet_events`` of its account's events, the account's stream sequence ``last_seq`` the
    last of them, and ``redemption_events`` of its voucher redemptions, those at or below
    stream sequence ``trail_upto``); this Sovereign opens no new order for it from now on.
    ``destination``: the Sovereign it went to, when the export named one."""

    type: Literal["wallet.account_moved"] = "wallet.account_moved"
    version: Literal[1] = 1
    destination: str | None = None
    bundle_digest: str  # SHA-256, hex
    wallet_events: int
    redemption_events: int
    last_seq: int
    trail_upto: int


# ---------------------------------------------------------------------- campaigns (issue #21)
# Subject ``<prefix>.events.campaign.<CAMPAIGN_ID>``: one aggregate decides all of a campaign's
# generated codes (``ledger/campaign.py``), so its cap and budget hold across them.


class CampaignCreated(Frozen):
    """A campaign of generated codes: what each code gives (``kind``; ``credit``: a flat
    ``credit_baisa`` per redemption), its limits across all its codes (``max_redemptions``, 0:
    none; ``budget_baisa``, the most credit it may ever grant, None: none), each code's own cap
    (``code_max_redemptions``, 0: none), and the window and eligibility rules of single
    vouchers (``voucher.issued``)."""

    type: Literal["campaign.created"] = "campaign.created"
    version: Literal[1] = 1
    campaign_id: str
    name: str
    description: str
    kind: Literal["credit", "percent_off", "amount_off"] = "credit"
    credit_baisa: int
    max_redemptions: int
    budget_baisa: int | None
    code_max_redemptions: int
    active: bool
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: list[str] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None  # a discount campaign's terms (credit_baisa 0)


class CampaignCodesGenerated(Frozen):
    """New codes of the campaign (``[PREFIX-]CAMPAIGN_ID-RANDOM``). One generation (one
    command) writes its codes in parts of at most 5,000 (a message stays far below NATS's
    1 MB); ``part`` counts them from 0 within the generation (the command id)."""

    type: Literal["campaign.codes_generated"] = "campaign.codes_generated"
    version: Literal[1] = 1
    campaign_id: str
    prefix: str | None
    part: int
    codes: list[str]


class CampaignCodeRedeemed(_ByOwnUser):
    """An account (``customer_id``, the Organization) redeemed one of the campaign's codes:
    a slot of the code's and of the campaign's cap, and ``credit_baisa`` of its budget.
    ``order_id``: the checkout order it redeemed for, and ``order`` that order as priced (so
    recovery can record it failed if the checkout stopped before its wallet placed it)."""

    type: Literal["campaign.code_redeemed"] = "campaign.code_redeemed"
    version: Literal[1] = 1
    campaign_id: str
    code: str
    customer_id: str
    user_id: str
    redemption_id: str
    credit_baisa: int
    credit_expires_at: datetime | None = None
    order_id: str | None = None
    # the priced order the checkout redeemed for (as ``voucher.redeemed`` v3 carries it)
    order: OrderDraft | None = None


class CampaignRedemptionReversed(Frozen):
    """A redemption of a campaign code was undone (checkout compensation or admin): its slot
    of the code's and the campaign's cap, and its ``credit_baisa`` of the budget, are free."""

    type: Literal["campaign.redemption_reversed"] = "campaign.redemption_reversed"
    version: Literal[1] = 1
    campaign_id: str
    code: str
    customer_id: str
    redemption_id: str
    credit_baisa: int
    reason: str


class CampaignRevoked(Frozen):
    """The campaign and every code of it stop redeeming (history and figures are kept)."""

    type: Literal["campaign.revoked"] = "campaign.revoked"
    version: Literal[1] = 1
    campaign_id: str


CampaignEventT = (
    CampaignCreated
    | CampaignCodesGenerated
    | CampaignCodeRedeemed
    | CampaignRedemptionReversed
    | CampaignRevoked
)
CAMPAIGN_EVENT_TYPES: tuple[type[Frozen], ...] = (
    CampaignCreated,
    CampaignCodesGenerated,
    CampaignCodeRedeemed,
    CampaignRedemptionReversed,
    CampaignRevoked,
)


# ------------------------------------------------------------- global vouchers (issue #22)
# At the hub, subject ``<prefix>.events.global.<CODE>``: one aggregate per global code owns its
# cap and decides how much of it each Sovereign holds (``ledger/global_voucher.py``). On a
# Sovereign the code is a voucher (``voucher.<CODE>``) whose cap is the share it received
# (``voucher.share_received``); every Sovereign's stream reaches the hub's trail by sourcing.


class GlobalIssued(Frozen):
    """The hub issued a global voucher: what every Sovereign redeems it for (the fields of
    ``voucher.issued``), ``max_redemptions`` its cap across all Sovereigns together (> 0), and
    the Sovereigns it was first allotted to."""

    type: Literal["global.issued"] = "global.issued"
    version: Literal[1] = 1
    code: str
    credit_baisa: int
    description: str
    max_redemptions: int
    sovereigns: list[str]
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: list[str] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None


class GlobalShareAllotted(Frozen):
    """The hub gave ``slots`` of the cap to ``sovereign`` (``allotted_total``: all it was ever
    given for this code); ``pool``: the slots no Sovereign holds after this."""

    type: Literal["global.share_allotted"] = "global.share_allotted"
    version: Literal[1] = 1
    code: str
    sovereign: str
    slots: int
    allotted_total: int
    pool: int


class GlobalRecallRequested(Frozen):
    """The hub asked ``sovereign`` to give back ``slots`` it has not used (``requested_total``:
    all it was ever asked for); the Sovereign answers with ``voucher.share_released``."""

    type: Literal["global.recall_requested"] = "global.recall_requested"
    version: Literal[1] = 1
    code: str
    sovereign: str
    slots: int
    requested_total: int


class GlobalObserved(Frozen):
    """What the hub's trail showed of ``sovereign`` up to trail sequence ``trail_seq``: its
    redemptions of the code still standing (``redeemed``) and all the slots it released
    (``released_total``, back in the pool: ``pool`` after this)."""

    type: Literal["global.observed"] = "global.observed"
    version: Literal[1] = 1
    code: str
    sovereign: str
    trail_seq: int
    redeemed: int
    released_total: int
    answered_total: int  # the recalls (``requested_total``) the Sovereign has answered
    pool: int
    # Whether the Sovereign waits for slots: it redeemed down to the low-water mark, said it
    # wants some (``voucher.share_wanted``) or was just heard of, and was not given any since.
    # Released slots go to these first.
    wanting: bool = False
    # All the demand signals the Sovereign recorded (its latest ``voucher.share_wanted``'s
    # ``wanted_total``), as far as the trail has reached.
    wanted_total: int = 0


class GlobalRevoked(Frozen):
    """The hub revoked the global voucher: each Sovereign stops redeeming it once this reaches
    it, and gives back the slots it had not used."""

    type: Literal["global.revoked"] = "global.revoked"
    version: Literal[1] = 1
    code: str


class ShareReceived(Frozen):
    """On a Sovereign: the hub's figures for this Sovereign's share of a global code, as they
    arrived (cumulative, so a late or repeated delivery changes nothing): ``allotted_total``
    slots given, ``requested_total`` asked back, ``pool_empty`` whether the hub had no slot
    left to give, and the hub's stream sequence they were read at (``hub_seq``)."""

    type: Literal["voucher.share_received"] = "voucher.share_received"
    version: Literal[1] = 1
    code: str
    allotted_total: int
    requested_total: int
    pool_empty: bool
    hub_seq: int


class ShareReleased(Frozen):
    """On a Sovereign: ``slots`` of its share it had not used go back to the hub (a recall, or
    the code's revocation); ``released_total``: all it ever released for this code;
    ``answered_total``: the hub's ``requested_total`` this answers (each recall is answered
    once, with what was unused then, possibly 0)."""

    type: Literal["voucher.share_released"] = "voucher.share_released"
    version: Literal[1] = 1
    code: str
    slots: int
    released_total: int
    answered_total: int


class ShareWanted(Frozen):
    """On a Sovereign: a customer was refused a global code because this Sovereign's share is
    used up (``share_exhausted``), and it says so to the hub (issue #22), once per exhaustion:
    at most one of these between two ``voucher.share_received``. ``wanted_total``: a counter of
    all the times it said so for this code (1, 2, ...), cumulative like the other figures that
    cross a link, so the hub's allocator keeps the largest it has seen and the hub's aggregate
    marks the Sovereign wanting when it rose."""

    type: Literal["voucher.share_wanted"] = "voucher.share_wanted"
    version: Literal[1] = 1
    code: str
    wanted_total: int


GlobalEventT = (
    GlobalIssued | GlobalShareAllotted | GlobalRecallRequested | GlobalObserved | GlobalRevoked
)
GLOBAL_EVENT_TYPES: tuple[type[Frozen], ...] = (
    GlobalIssued,
    GlobalShareAllotted,
    GlobalRecallRequested,
    GlobalObserved,
    GlobalRevoked,
    ShareReceived,
    ShareReleased,
    ShareWanted,
)

VoucherEvent = Annotated[
    VoucherIssued
    | VoucherRevoked
    | VoucherRedeemed
    | RedemptionReversed
    | ShareReceived
    | ShareReleased
    | ShareWanted,
    Field(discriminator="type"),
]
WalletEventT = (
    CreditGranted
    | GrantRevoked
    | CreditReserved
    | CreditCaptured
    | CreditReleased
    | CreditExpired
    | OrderOpened
    | OrderPaymentRequested
    | OrderSessionCreated
    | OrderCompleted
    | OrderFailed
    | OrderAbandoned
    | OrderRefundDue
    | InvoiceRecorded
    | OrderPlaced
    | AccountMoved
)
AnyEvent = Annotated[
    VoucherIssued
    | VoucherRevoked
    | VoucherRedeemed
    | RedemptionReversed
    | WalletEventT
    | CampaignEventT
    | GlobalEventT
    | ShareReceived
    | ShareReleased
    | ShareWanted,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[type[Frozen], ...] = (
    VoucherIssued,
    VoucherRevoked,
    VoucherRedeemed,
    RedemptionReversed,
    CreditGranted,
    GrantRevoked,
    CreditReserved,
    CreditCaptured,
    CreditReleased,
    CreditExpired,
    OrderOpened,
    OrderPaymentRequested,
    OrderSessionCreated,
    OrderCompleted,
    OrderFailed,
    OrderAbandoned,
    OrderRefundDue,
    InvoiceRecorded,
    OrderPlaced,
    AccountMoved,
    *CAMPAIGN_EVENT_TYPES,
    *GLOBAL_EVENT_TYPES,
)


class ChainProof(Frozen):
    """That the ledger wrote the event (``voucher_ledger.signing.proof``), on an event that is
    not the last of its aggregate's events in its append: ``prev`` is the link of the
    aggregate's previous signed event (its hash chain), and the event is the ``i``-th of the
    ``n`` events of its aggregate in the append. The last of those carries the signature
    (:class:`SignedProof`), which covers this one through the chain."""

    prev: str = Field(pattern=r"^[0-9a-f]{64}$")
    i: int = Field(ge=0)
    n: int = Field(ge=1)


class SignedProof(ChainProof):
    """The proof of the last of an aggregate's events in an append: its link is leaf ``j`` of
    the ``m`` of the append's Merkle tree (one leaf per aggregate), ``path`` its siblings up to
    the root, and ``sig`` the Ed25519 signature of that root by the key ``key``."""

    key: str = Field(pattern=r"^[0-9a-f]{16}$")
    j: int = Field(ge=0)
    m: int = Field(ge=1)
    path: str = Field(pattern=r"^[A-Za-z0-9_-]{0,2000}$")
    sig: str = Field(pattern=r"^[A-Za-z0-9_-]{86}$")


EventProof = SignedProof | ChainProof


class EventEnvelope(Frozen):
    event_id: str
    aggregate: Literal["voucher", "wallet", "campaign", "global"] = "voucher"
    aggregate_id: str
    occurred_at: datetime
    actor: Actor
    command_id: str
    # Digest of the causing command's payload: a retried command id is matched against it.
    command_fingerprint: str = ""
    event: AnyEvent
    # Last, absent on events stored before signing started (envelope version 2 adds it).
    proof: SignedProof | ChainProof | None = None


class RecordedEvent(Frozen):
    """An envelope as stored: with its stream sequence (the global position in the event stream)
    and, when read from the stream, its stored bytes (what its proof covers: an event upcast on
    read no longer encodes to them)."""

    seq: int
    envelope: EventEnvelope
    raw: bytes | None = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        """The same event at the same place, whether or not its stored bytes came along."""
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return self.seq == other.seq and self.envelope == other.envelope

    def __hash__(self) -> int:
        return hash((self.seq, self.envelope.event_id))


# (type, version) -> function turning that version's dict into the next version's dict.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _issued_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    """A v1 voucher had no window and no eligibility rules: the v2 defaults say so."""
    return {
        **event,
        "version": 2,
        "starts_at": None,
        "expires_at": None,
        "plans": None,
        "min_order_baisa": 0,
        "new_organizations_only": False,
        "credit_valid_for_seconds": None,
    }


def _by_own_user_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    """Before issue #20 the account was the user: ``user_id`` is the ``customer_id``."""
    return {**event, "version": 2, "user_id": event.get("customer_id")}


def _redeemed_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    """And its credit never expired."""
    return {**_by_own_user_v1_to_v2(event), "credit_expires_at": None}


def _issued_v2_to_v3(event: dict[str, Any]) -> dict[str, Any]:
    """Every voucher before issue #21 gave credit."""
    return {**event, "version": 3, "discount": None}


def _opened_v2_to_v3(event: dict[str, Any]) -> dict[str, Any]:
    """No order before issue #21 had a discount."""
    return {**event, "version": 3, "discount_baisa": 0, "discount_code": None, "line_discounts": []}


def _redeemed_v2_to_v3(event: dict[str, Any]) -> dict[str, Any]:
    """Its order (if any) was opened in the wallet before the redemption: none carried."""
    return {**event, "version": 3, "order": None}


def _opened_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    return {**_by_own_user_v1_to_v2(event), "member_by_claim": False}


def _granted_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    """A v1 grant never expired."""
    return {**event, "version": 2, "expires_at": None}


def _lots_v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
    """Before v2 no grant expired: nothing came from (or went back to) an expiring one."""
    return {**event, "version": 2, "lots": []}


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("wallet.credit_granted", 1): _granted_v1_to_v2,
    ("wallet.grant_revoked", 1): _lots_v1_to_v2,
    ("wallet.credit_reserved", 1): _lots_v1_to_v2,
    ("wallet.credit_released", 1): _lots_v1_to_v2,
    ("voucher.issued", 1): _issued_v1_to_v2,
    ("voucher.issued", 2): _issued_v2_to_v3,
    ("voucher.redeemed", 1): _redeemed_v1_to_v2,
    ("voucher.redeemed", 2): _redeemed_v2_to_v3,
    ("order.opened", 1): _opened_v1_to_v2,
    ("order.opened", 2): _opened_v2_to_v3,
}
CURRENT_VERSIONS: dict[str, int] = {
    str(model.model_fields["type"].default): int(model.model_fields["version"].default)
    for model in EVENT_TYPES
}

_ENVELOPE = TypeAdapter(EventEnvelope)


class UnknownEventVersion(ValueError):
    pass


def upcast(event: dict[str, Any]) -> dict[str, Any]:
    """Bring an event dict up to the current schema version of its type."""
    etype = str(event.get("type"))
    current = CURRENT_VERSIONS.get(etype)
    if current is None:
        raise UnknownEventVersion(f"unknown event type {etype!r}")
    version = int(event.get("version", 1))
    while version < current:
        step = UPCASTERS.get((etype, version))
        if step is None:
            raise UnknownEventVersion(f"no upcaster for {etype} v{version}")
        event = step(dict(event))
        version = int(event["version"])
    if version > current:
        raise UnknownEventVersion(f"{etype} v{version} is newer than this build (v{current})")
    return event


def decode_envelope(raw: bytes) -> EventEnvelope:
    """Bytes from the stream to the current model. Events already at their current version
    (nearly all) take pydantic's JSON fast path; anything else goes through the upcasters."""
    try:
        return _ENVELOPE.validate_json(raw)
    except ValidationError:
        pass
    doc = json.loads(raw)
    if isinstance(doc, dict) and isinstance(doc.get("event"), dict):
        doc["event"] = upcast(doc["event"])
    return _ENVELOPE.validate_python(doc)


def isoformat_z(at: datetime) -> str:
    """ISO 8601 as pydantic writes a datetime: UTC as ``Z``, any other offset as it is."""
    text = at.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def encode_envelope(envelope: EventEnvelope) -> bytes:
    """The stored body: the proof, when there is one, is its last field (an unsigned envelope
    is written as before signing existed, without ``"proof": null``)."""
    if envelope.proof is None:
        return envelope.model_dump_json(exclude=_NO_PROOF).encode()
    return envelope.model_dump_json().encode()


_NO_PROOF = {"proof"}


# ------------------------------------------------------------------ plain (dict) decoding

# Bulk readers (rebuild) want the fields, not model instances: the same validation as
# ``decode_envelope`` (the same fields, types, coercions, literals and forbidden extras, by
# TypedDicts generated from the models) into plain dicts: a third of the CPU of models when a
# batch of them is kept alive (bench/README.md).
_TYPED_DICT: Any = TypedDict  # the functional form, with fields computed from the models
_PLAIN_DEFAULTS: dict[str, dict[str, Any]] = {}  # type tag -> defaults of its optional fields


def _plain_annotation(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Frozen):
        return _plain_dict(annotation)
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return list[_plain_annotation(item)]  # type: ignore[misc]
    args = get_args(annotation)
    if type(None) in args and any(isinstance(a, type) and issubclass(a, Frozen) for a in args):
        return Union[tuple(_plain_annotation(a) for a in args)]  # noqa: UP007 - built from parts
    return annotation


def _plain_dict(model: type[Frozen]) -> Any:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = _plain_annotation(info.annotation)
        required = info.is_required() or name in ("type", "version")  # the tags must be there
        fields[name] = annotation if required else NotRequired[annotation]
    plain = _TYPED_DICT(f"{model.__name__}Plain", fields)
    plain.__pydantic_config__ = ConfigDict(extra="forbid")
    return plain


def _defaults(model: type[Frozen]) -> dict[str, Any]:
    return {
        name: info.default
        for name, info in model.model_fields.items()
        if not info.is_required() and info.default is not PydanticUndefined
    }


for _model in EVENT_TYPES:
    _PLAIN_DEFAULTS[str(_model.model_fields["type"].default)] = {
        k: v for k, v in _defaults(_model).items() if k not in ("type", "version")
    }
_ENVELOPE_DEFAULTS = _defaults(EventEnvelope)
_ENVELOPE_FIELDS = len(EventEnvelope.model_fields)
_PLAIN_ENVELOPE = TypeAdapter(
    _TYPED_DICT(
        "EventEnvelopePlain",
        {
            **{
                name: (
                    _plain_annotation(info.annotation)
                    if info.is_required()
                    else NotRequired[_plain_annotation(info.annotation)]
                )
                for name, info in EventEnvelope.model_fields.items()
                if name != "event"
            },
            "event": Annotated[
                Union[tuple(_plain_dict(m) for m in EVENT_TYPES)],  # noqa: UP007
                Field(discriminator="type"),
            ],
        },
    )
)


def decode_plain(raw: bytes) -> dict[str, Any]:
    """``decode_envelope`` into plain dicts: the envelope's fields, ``occurred_at`` a datetime,
    ``event`` a dict of the current version's fields (nested models as dicts too), optional
    fields filled with their defaults. Old versions go through the upcasters and the models."""
    try:
        doc: dict[str, Any] = _PLAIN_ENVELOPE.validate_json(raw)
    except ValidationError:
        return decode_envelope(raw).model_dump()
    if len(doc) != _ENVELOPE_FIELDS:
        doc = {**_ENVELOPE_DEFAULTS, **doc}
    event = doc["event"]
    defaults = _PLAIN_DEFAULTS[event["type"]]
    if defaults and any(k not in event for k in defaults):
        doc["event"] = {**defaults, **event}
    return doc


PLACED = "order.placed"


def placed_parts(event: dict[str, Any]) -> list[dict[str, Any]]:
    """``order.placed`` as a plain dict (``decode_plain``'s shape) -> its parts, the same way."""
    return [part.model_dump() for part in OrderPlaced.model_validate(event).parts()]
