"""Domain commands: imperative, frozen, validated at construction (codes normalised)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, ValidationInfo, field_validator, model_validator

from voucher_ledger.ledger.campaign_codes import (
    campaign_of,
    normalise_prefix,
    validate_campaign_id,
)
from voucher_ledger.ledger.codes import normalise_code, validate_customer_id
from voucher_ledger.ledger.durations import parse_discount_duration
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import (
    DiscountTerms,
    Frozen,
    GlobalIssued,
    OrderDraft,
    OrderLine,
)


class _CodeCommand(Frozen):
    code: str
    # Fields added after the command's first version: left out of the fingerprint while unset,
    # so a command without them keeps the digest it had before they existed.
    _added: ClassVar[frozenset[str]] = frozenset()

    @property
    def aggregate(self) -> tuple[Literal["voucher", "campaign"], str]:
        """A generated code's commands are its campaign's (issue #21)."""
        campaign = campaign_of(self.code)
        return ("voucher", self.code) if campaign is None else ("campaign", campaign)

    @field_validator("code", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> str:
        return normalise_code(value)

    def fingerprint(self) -> str:
        """A digest of the payload, to detect a command id reused for a different command."""
        unset = {name for name in self._added if getattr(self, name) in (None, [])}
        payload = self.model_dump_json(exclude=unset) if unset else self.model_dump_json()
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


PLAN_ID = r"^[^\x00-\x1f\x7f]{1,100}$"


def check_discount(terms: DiscountTerms) -> None:
    """A discount's terms as a voucher or a campaign may carry them (InvalidInput if not)."""
    if terms.kind == "percent_off":
        if terms.percent_off is None or not 1 <= terms.percent_off <= 100:
            raise InvalidInput("percent_off", "percent_off must be a whole number from 1 to 100")
        if terms.amount_off_baisa is not None:
            raise InvalidInput("amount_off", "a percent_off discount takes no amount_off")
    else:
        if terms.amount_off_baisa is None or not 0 < terms.amount_off_baisa <= 10**12:
            raise InvalidInput("amount_off", "amount_off must be more than 0")
        if terms.percent_off is not None:
            raise InvalidInput("percent_off", "an amount_off discount takes no percent_off")
    if terms.applies_to is not None and (
        not terms.applies_to or len(set(terms.applies_to)) != len(terms.applies_to)
    ):
        raise InvalidInput("applies_to", "applies_to names plans, addons or apps, each once")
    try:
        canonical = parse_discount_duration(terms.duration)
    except ValueError as exc:
        raise InvalidInput("duration", f"duration {exc}") from exc
    if canonical != terms.duration:
        raise InvalidInput("duration", f"duration must be written {canonical!r}")


CLEARABLE = (
    "starts_at",
    "expires_at",
    "plans",
    "min_order_baisa",
    "new_organizations_only",
    "credit_valid_for_seconds",
)
# The longest credit_valid_for: 100 years (a timestamp PostgreSQL and Python both hold).
MAX_VALID_FOR_SECONDS = 100 * 366 * 86400


class IssueVoucher(_CodeCommand):
    """Upsert: create, update or restore a revoked code.

    A field left out (None) keeps the voucher's current value on an update, and takes the
    default on a create (description "", active true, max_redemptions 0 = unlimited). The seed
    service replaced every field, so a missing ``active`` silently deactivated a voucher (B9).
    """

    type: Literal["issue_voucher"] = "issue_voucher"
    # issue #21: a discount voucher's terms (then ``credit_baisa`` is 0); None: a credit voucher.
    # (Before credit_baisa, so that its check sees it; left out of the payload when None.)
    discount: DiscountTerms | None = None
    # credit per redemption; 0 for a discount voucher, which grants no credit
    credit_baisa: int = Field(ge=0, strict=True)
    description: str | None = Field(default=None, max_length=2000)
    active: bool | None = Field(default=None, strict=True)
    max_redemptions: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)
    # When the code redeems, and who may redeem it (None: keep the current value, or none on a
    # create). ``clear`` names the ones set back to none (an explicit null in the request).
    starts_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    plans: list[Annotated[str, Field(pattern=PLAN_ID)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    min_order_baisa: int | None = Field(default=None, ge=0, le=2**62, strict=True)
    new_organizations_only: bool | None = Field(default=None, strict=True)
    credit_valid_for_seconds: int | None = Field(
        default=None, gt=0, le=MAX_VALID_FOR_SECONDS, strict=True
    )
    clear: list[Literal[CLEARABLE]] = Field(default_factory=list)  # type: ignore[valid-type]

    _added = frozenset((*CLEARABLE, "clear", "discount"))

    @field_validator("credit_baisa")
    @classmethod
    def _one_kind(cls, value: int, info: ValidationInfo) -> int:
        discount = info.data.get("discount")
        if discount is None and value <= 0:
            raise ValueError("Input should be greater than 0")
        if discount is not None and value:
            raise ValueError("a discount voucher gives no credit")
        return value

    @field_validator("discount")
    @classmethod
    def _terms(cls, value: DiscountTerms | None) -> DiscountTerms | None:
        if value is not None:
            check_discount(value)
        return value

    @field_validator("starts_at", "expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    @field_validator("description")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        # NUL cannot be stored by PostgreSQL (text or jsonb): refuse it at the door rather than
        # append an event no read model can hold.
        if value is not None and "\x00" in value:
            raise InvalidInput("description", "description must not contain NUL characters")
        return value


class RevokeVoucher(_CodeCommand):
    type: Literal["revoke_voucher"] = "revoke_voucher"


class RedeemVoucher(_CodeCommand):
    """Take one redemption slot for ``customer_id``. The checkout also says what the voucher's
    eligibility rules look at: its plan, its total before credit, and whether the account has
    completed an order before. A rule the command cannot answer (a field left out) refuses."""

    type: Literal["redeem_voucher"] = "redeem_voucher"
    customer_id: str  # the account: the Organization (the checkout's tenant_id)
    # The login redeeming for it (one redemption per user per code too); None: the account's
    # own user (as before issue #20, when the account was the user).
    user_id: str | None = None
    plan_id: str | None = Field(default=None, pattern=PLAN_ID)
    order_total_baisa: int | None = Field(default=None, ge=0, strict=True)
    new_organization: bool | None = Field(default=None, strict=True)
    # The checkout's priced order, recorded with the redemption; the wallet places it next
    # (PlaceOrder). With an order and no ``new_organization``, a voucher for new Organizations
    # only leaves that rule to the wallet, which knows (PlaceOrder.first_order_only).
    order: OrderDraft | None = None

    @field_validator("user_id", mode="before")
    @classmethod
    def _user(cls, value: object) -> str | None:
        return None if value is None else validate_customer_id(value)

    def fingerprint(self) -> str:
        # The code, the account and the user: what the checkout's eligibility facts say may
        # differ on a retry of the same order (the account completed another order
        # meanwhile), and the command id is the order's, so a retry must still find its receipt.
        fields = {"code", "type", "customer_id"} | ({"user_id"} if self.user_id else set())
        payload = self.model_dump_json(include=fields)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @property
    def user(self) -> str:
        return self.user_id if self.user_id is not None else self.customer_id

    @field_validator("customer_id", mode="before")
    @classmethod
    def _customer(cls, value: object) -> str:
        return validate_customer_id(value)


class ReverseRedemption(_CodeCommand):
    type: Literal["reverse_redemption"] = "reverse_redemption"
    customer_id: str
    redemption_id: str | None = None
    reason: str = Field(default="admin", max_length=200)

    @field_validator("customer_id", mode="before")
    @classmethod
    def _customer(cls, value: object) -> str:
        return validate_customer_id(value)

    def fingerprint(self) -> str:
        # The redemption id is optional on the command but always on the event: leave it out,
        # so a replayed reversal matches whether or not the caller named it.
        payload = self.model_dump_json(exclude={"redemption_id"})
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


# ------------------------------------------------------------------------- wallet (per customer)

_ID = Field(min_length=1, max_length=200)


class _WalletCommand(Frozen):
    customer_id: str
    order_id: str = _ID

    @field_validator("customer_id", mode="before")
    @classmethod
    def _customer(cls, value: object) -> str:
        return validate_customer_id(value)

    @property
    def aggregate(self) -> tuple[Literal["wallet"], str]:
        return ("wallet", self.customer_id)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]


class OpenOrder(_WalletCommand):
    """Record a priced checkout before anything is redeemed, reserved or charged."""

    type: Literal["open_order"] = "open_order"
    # The login opening it (None: the account's own user, as before issue #20), and whether
    # its token's claim names the Organization (else it must be the account's owner).
    user_id: str | None = None
    member_by_claim: bool = False
    tenant_id: str = _ID
    plan_id: str = _ID
    apps: list[str] = Field(default_factory=list, max_length=100)
    addons: list[str] = Field(default_factory=list, max_length=100)
    promo_code: str | None = None
    lines: list[OrderLine] = Field(min_length=1, max_length=101)
    total_baisa: int = Field(ge=0, strict=True)


class Grant(Frozen):
    """The credit a checkout's redemption earned, granted when the order settles."""

    redemption_id: str = _ID
    code: str
    amount_baisa: int = Field(gt=0, strict=True)
    expires_at: AwareDatetime | None = None  # the voucher's credit_valid_for after redemption


class SettleOrder(_WalletCommand):
    """Grant the redemption's credit, then apply credit first: complete the order on credit
    alone, or reserve the credit and ask for the rest through Stripe."""

    type: Literal["settle_order"] = "settle_order"
    grant: Grant | None = None
    payment_available: bool


class GrantCredit(_WalletCommand):
    """Grant the redemption's credit to an order still opened, and nothing else (idempotent by
    redemption id). The checkout of an order with nothing to pay sends it before SettleOrder,
    so that each step is one event: a single-event append is a plain publish, where several
    events go as an atomic batch, which a one-replica file stream stages in a temporary file
    store of its own (several milliseconds of nats-server CPU and fsyncs per batch)."""

    type: Literal["grant_credit"] = "grant_credit"
    grant: Grant


class DiscountGrant(Frozen):
    """The discount an order's redemption (``redemption_id`` of ``code``) gives."""

    redemption_id: str = _ID
    code: str
    terms: DiscountTerms


class Failure(Frozen):
    reason: str = Field(min_length=1, max_length=100)
    message: str = Field(max_length=500)


class PlaceOrder(_WalletCommand):
    """Place a priced checkout and settle it in one decision (one append): the order, the
    redemption's credit (``grant``), credit applied first, and either the order completed on
    credit alone or the rest asked of Stripe. Refused, writing nothing, when the order exists
    already, the user is no member, nothing can pay the rest (``payment_unavailable``), or the
    redemption was for an Organization's first order and this one has completed one
    (``first_order_only``). ``failure``: record the order as failed instead (recovery, for a
    redemption whose checkout never reached the wallet)."""

    type: Literal["place_order"] = "place_order"
    user_id: str | None = None
    member_by_claim: bool = False
    tenant_id: str = _ID
    plan_id: str = _ID
    apps: list[str] = Field(default_factory=list, max_length=100)
    addons: list[str] = Field(default_factory=list, max_length=100)
    promo_code: str | None = None
    lines: list[OrderLine] = Field(min_length=1, max_length=101)
    total_baisa: int = Field(ge=0, strict=True)
    grant: Grant | None = None
    payment_available: bool = False
    first_order_only: bool = False
    failure: Failure | None = None
    # issue #21: the discount this order's redemption gives (the wallet applies the best of it
    # and the Organization's running discounts, and keeps a running one for later orders)
    discount: DiscountGrant | None = None

    def draft(self) -> OrderDraft:
        return OrderDraft(
            order_id=self.order_id,
            tenant_id=self.tenant_id,
            user_id=self.user_id or self.customer_id,
            member_by_claim=self.member_by_claim,
            plan_id=self.plan_id,
            apps=self.apps,
            addons=self.addons,
            lines=self.lines,
            total_baisa=self.total_baisa,
        )


class AttachSession(_WalletCommand):
    type: Literal["attach_session"] = "attach_session"
    session_id: str = _ID
    session_url: str = Field(min_length=1, max_length=2000)


class ConfirmPayment(_WalletCommand):
    """Stripe says the session is paid: capture the reserved credit, complete the order."""

    type: Literal["confirm_payment"] = "confirm_payment"
    session_id: str = _ID
    amount_paid_baisa: int = Field(ge=0, strict=True)


class AbandonOrder(_WalletCommand):
    """The session expired or its payment failed: release the reserved credit."""

    type: Literal["abandon_order"] = "abandon_order"
    reason: str = Field(min_length=1, max_length=200)


class FailOrder(_WalletCommand):
    """The checkout cannot go on: release what it reserved and take back what it granted."""

    type: Literal["fail_order"] = "fail_order"
    reason: str = Field(min_length=1, max_length=100)
    message: str = Field(max_length=500)
    # Recovery fails only what it saw: refused (order_closed) if the order moved on meanwhile.
    expected_status: str | None = None


class ExpireCredit(_WalletCommand):
    """An expiring grant's remainder leaves the account, if it has expired and any is left
    (else nothing: a grant never expires twice). ``order_id``: the grant's order."""

    type: Literal["expire_credit"] = "expire_credit"
    redemption_id: str = _ID


class RecordInvoice(_WalletCommand):
    """Record a Stripe invoice of an Organization (``invoice.paid`` / ``invoice.payment_failed``)
    on the wallet of the customer whose checkout it bills. ``order_id``: that checkout's order
    (the invoice's metadata), or the invoice id when it names none."""

    type: Literal["record_invoice"] = "record_invoice"
    tenant_id: str = _ID
    user_id: str | None = Field(default=None, max_length=200)
    stripe_invoice_id: str = _ID
    stripe_customer_id: str | None = Field(default=None, max_length=200)
    outcome: Literal["paid", "payment_failed"]
    amount_baisa: int = Field(ge=0, strict=True)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    period_start: datetime | None = None
    period_end: datetime | None = None
    pdf_url: str | None = Field(default=None, max_length=2000)


class QueryOrder(_WalletCommand):
    """Changes nothing: answers with the order and the wallet as the processor has them now
    (the read models may lag; this cannot)."""

    type: Literal["query_order"] = "query_order"


WalletCommandT = (
    PlaceOrder
    | OpenOrder
    | SettleOrder
    | GrantCredit
    | AttachSession
    | ConfirmPayment
    | AbandonOrder
    | FailOrder
    | ExpireCredit
    | RecordInvoice
    | QueryOrder
)

# ---------------------------------------------------------------------- campaigns (issue #21)

MAX_CODES_PER_GENERATION = 100_000


class _CampaignCommand(Frozen):
    campaign_id: str

    @field_validator("campaign_id", mode="before")
    @classmethod
    def _campaign(cls, value: object) -> str:
        return validate_campaign_id(value)

    @property
    def aggregate(self) -> tuple[Literal["campaign"], str]:
        return ("campaign", self.campaign_id)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]


class CreateCampaign(_CampaignCommand):
    """A new campaign (create only: an id taken is refused). ``kind``: what each code gives;
    ``credit`` only for now (a flat ``credit_baisa``), the discount kinds come next."""

    type: Literal["create_campaign"] = "create_campaign"
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    kind: Literal["credit", "percent_off", "amount_off"] = "credit"
    # a discount campaign's terms (its codes give no credit; kind is the terms' kind)
    discount: DiscountTerms | None = None
    credit_baisa: int = Field(ge=0, strict=True)
    max_redemptions: int = Field(default=0, ge=0, le=2**31 - 1, strict=True)
    # the most credit it may grant; a credit campaign's only (what a discount costs depends on
    # orders to come: a discount campaign is limited by max_redemptions)
    budget_baisa: int | None = Field(default=None, gt=0, le=2**62, strict=True)
    code_max_redemptions: int = Field(default=1, ge=0, le=2**31 - 1, strict=True)
    active: bool = Field(default=True, strict=True)
    starts_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    plans: list[Annotated[str, Field(pattern=PLAN_ID)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    min_order_baisa: int = Field(default=0, ge=0, le=2**62, strict=True)
    new_organizations_only: bool = Field(default=False, strict=True)
    credit_valid_for_seconds: int | None = Field(
        default=None, gt=0, le=MAX_VALID_FOR_SECONDS, strict=True
    )

    @field_validator("starts_at", "expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    @field_validator("name", "description")
    @classmethod
    def _printable(cls, value: str) -> str:
        if "\x00" in value:
            raise InvalidInput("description", "name and description must not contain NUL")
        return value

    @field_validator("credit_baisa")
    @classmethod
    def _credit(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("discount") is None and value <= 0:
            raise ValueError("Input should be greater than 0")
        if info.data.get("discount") is not None and value:
            raise ValueError("a discount campaign gives no credit")
        return value

    @model_validator(mode="after")
    def _kind(self) -> CreateCampaign:
        if self.discount is not None:
            check_discount(self.discount)
        if (self.discount.kind if self.discount else "credit") != self.kind:
            raise InvalidInput("kind", "kind must be the discount's kind (or credit without one)")
        if self.discount is not None and self.budget_baisa is not None:
            raise InvalidInput(
                "budget_omr",
                "a budget is a credit campaign's: limit a discount campaign by max_redemptions",
            )
        return self


class GenerateCampaignCodes(_CampaignCommand):
    """``count`` new unique codes for the campaign, drawn by the processor that decides it."""

    type: Literal["generate_campaign_codes"] = "generate_campaign_codes"
    count: int = Field(ge=1, le=MAX_CODES_PER_GENERATION, strict=True)
    prefix: str | None = None

    @field_validator("prefix", mode="before")
    @classmethod
    def _prefix(cls, value: object) -> str | None:
        return normalise_prefix(value)


class RevokeCampaign(_CampaignCommand):
    """The campaign and all its codes stop redeeming."""

    type: Literal["revoke_campaign"] = "revoke_campaign"


CampaignCommandT = CreateCampaign | GenerateCampaignCodes | RevokeCampaign

# ------------------------------------------------------------- global vouchers (issue #22)

SOVEREIGN_NAME = r"^[a-z][a-z0-9_]{0,31}$"


class _GlobalCommand(Frozen):
    """A command for a global voucher at the hub (``ledger/global_voucher.py``)."""

    code: str

    @field_validator("code", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> str:
        return normalise_code(value)

    @property
    def aggregate(self) -> tuple[Literal["global"], str]:
        return ("global", self.code)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]


class IssueGlobal(_GlobalCommand):
    """Issue a global voucher at the hub (create only): ``terms`` as a single voucher's issue
    (its ``max_redemptions``, required, is the cap across all Sovereigns), first allotted to
    ``sovereigns``."""

    type: Literal["issue_global"] = "issue_global"
    terms: IssueVoucher
    sovereigns: list[Annotated[str, Field(pattern=SOVEREIGN_NAME)]] = Field(max_length=1000)

    @model_validator(mode="after")
    def _same_code(self) -> IssueGlobal:
        if self.terms.code != self.code:
            raise ValueError("the terms are for another code")
        if not self.terms.max_redemptions:
            raise InvalidInput("max_redemptions", "a global voucher needs a cap (at least 1)")
        if campaign_of(self.code) is not None:
            raise InvalidInput("code", "a global code must not have a campaign code's shape")
        return self


class ObserveSovereign(_GlobalCommand):
    """What the hub's trail shows of one Sovereign for this code, read up to ``trail_seq``:
    its standing redemptions and all it released. Sent by the hub's allocator; the aggregate
    keeps the latest and tops the Sovereign's share up by the allocation policy."""

    type: Literal["observe_sovereign"] = "observe_sovereign"
    sovereign: str = Field(pattern=SOVEREIGN_NAME)
    trail_seq: int = Field(ge=1, strict=True)
    redeemed: int = Field(ge=0, strict=True)
    released_total: int = Field(ge=0, strict=True)
    answered_total: int = Field(ge=0, strict=True)
    # the Sovereign's latest ``voucher.share_wanted`` (its ``wanted_total``; 0: none yet)
    wanted_total: int = Field(default=0, ge=0, strict=True)

    def fingerprint(self) -> str:
        # Without ``wanted_total`` while 0: the digest an observation had before it existed.
        payload = (
            self.model_dump_json(exclude={"wanted_total"})
            if not self.wanted_total
            else self.model_dump_json()
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


class RecallShare(_GlobalCommand):
    """Ask ``sovereign`` to give back ``slots`` of its share it has not used."""

    type: Literal["recall_share"] = "recall_share"
    sovereign: str = Field(pattern=SOVEREIGN_NAME)
    slots: int = Field(ge=1, le=2**31 - 1, strict=True)


class RevokeGlobal(_GlobalCommand):
    type: Literal["revoke_global"] = "revoke_global"


GlobalCommandT = IssueGlobal | ObserveSovereign | RecallShare | RevokeGlobal


class ReceiveGlobal(_CodeCommand):
    """On a Sovereign: the hub's latest figures for this Sovereign's share of the global code
    ``code`` (``definition``: the hub's ``global.issued``), read from its copy of the hub's
    global events at position ``hub_seq``. Sent by the Sovereign's share inbox; cumulative, so
    sending it twice, late or out of order changes nothing."""

    type: Literal["receive_global"] = "receive_global"
    definition: GlobalIssued
    allotted_total: int = Field(ge=0, strict=True)
    requested_total: int = Field(ge=0, strict=True)
    revoked: bool = Field(strict=True)
    pool_empty: bool = Field(strict=True)
    hub_seq: int = Field(ge=1, strict=True)

    @property
    def aggregate(self) -> tuple[Literal["voucher", "campaign"], str]:
        return ("voucher", self.code)

    def fingerprint(self) -> str:
        # Cumulative figures: a later delivery under the same command id is the same command.
        return "receive_global"


class WantShare(_CodeCommand):
    """On a Sovereign: a customer was just refused the global code ``code`` because this
    Sovereign's share is used up (``share_exhausted``); record that it wants slots
    (``voucher.share_wanted``), so the hub's allocator learns it. Sent by the checkout, in the
    background. Recorded only when the share is used up, the code not revoked, and the
    Sovereign has not said so since the last share it received; otherwise it changes nothing
    (so a storm of refusals writes one event per exhaustion). Refused for a code that is not a
    global code's share on this Sovereign."""

    type: Literal["want_share"] = "want_share"

    @property
    def aggregate(self) -> tuple[Literal["voucher", "campaign"], str]:
        return ("voucher", self.code)

    def fingerprint(self) -> str:
        # Nothing but the code: any delivery under the same command id is the same command.
        return "want_share"


VoucherCommand = Annotated[
    IssueVoucher | RevokeVoucher | RedeemVoucher | ReverseRedemption,
    Field(discriminator="type"),
]
AnyCommand = Annotated[
    IssueVoucher
    | RevokeVoucher
    | RedeemVoucher
    | ReverseRedemption
    | ReceiveGlobal
    | WantShare
    | WalletCommandT
    | CampaignCommandT
    | GlobalCommandT,
    Field(discriminator="type"),
]


class MoveAccount(Frozen):
    """Record that the Organization ``customer_id`` moved to another Sovereign in the bundle
    ``bundle_digest``. Decided by the exporting operator job (``voucher-ledger org export``,
    ``ledger.wallet.decide_move``) against the history it exported, and appended with that
    history's last sequence as the expectation: never sent on the command bus (not in
    :data:`AnyCommand`)."""

    type: Literal["move_account"] = "move_account"
    customer_id: str
    destination: str | None = Field(default=None, min_length=1, max_length=253)
    bundle_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    wallet_events: int = Field(ge=1)
    redemption_events: int = Field(ge=0)
    trail_upto: int = Field(ge=0)  # the stream sequence the redemptions carried reach

    @field_validator("customer_id", mode="before")
    @classmethod
    def _customer(cls, value: object) -> str:
        return validate_customer_id(value)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]
