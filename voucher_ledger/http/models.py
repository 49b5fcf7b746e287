"""Request and response models: the handlers validate with them and /openapi.json is generated
from them, so the documentation cannot drift from the code."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from voucher_ledger.ledger.codes import (
    CODE_INPUT_PATTERN,
    CODE_RULE,
    PROMO_INPUT_PATTERN,
    normalise_code,
)
from voucher_ledger.ledger.errors import InvalidInput


class _In(BaseModel):
    # Unknown fields are ignored (the public preview: a typo there costs nothing).
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    # Where a typo costs money ("max_redemption": 3 would be an uncapped voucher), an unknown
    # field is a 400 naming it.
    model_config = ConfigDict(extra="forbid")


def _read_only(what: str) -> Any:
    return Field(
        default=None,
        exclude=True,
        description=f"{what}; accepted and ignored (the seed's admin UI posts a listed row back)",
        json_schema_extra={"readOnly": True},
    )


class IssueVoucherBody(_Strict):
    """Create, update or restore a voucher. Omitted optional fields keep their current value
    on an update and take the default on a create (active true, unlimited, no description).
    A voucher as listed may be posted back whole: its read-only fields are ignored; any other
    unknown field is a 400."""

    code: StrictStr = Field(
        description="normalised with strip().upper(); [A-Z0-9_-], 3-64",
        json_schema_extra={"pattern": CODE_INPUT_PATTERN},
    )
    credit_omr: StrictInt = Field(gt=0, description="credit per redemption, whole OMR")
    description: StrictStr | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")
    active: StrictBool | None = None
    max_redemptions: StrictInt | None = Field(
        default=None, ge=0, le=2**31 - 1, description="0 = unlimited"
    )
    credit_baisa: Any = _read_only("credit_omr in baisa")
    times_redeemed: Any = _read_only("the redemption counter")
    created_at: Any = _read_only("when the voucher was created")
    updated_at: Any = _read_only("when the voucher last changed")

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        try:
            return normalise_code(value)
        except InvalidInput as exc:
            blank = not value.strip()
            raise ValueError("is required" if blank else f"must be {CODE_RULE}") from exc

    @field_validator("credit_omr")
    @classmethod
    def _at_most(cls, value: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_credit_omr")
        if limit is not None and value > limit:
            raise ValueError(f"must be {limit} or less")
        return value


class PreviewBody(_In):
    code: StrictStr = Field(
        description="a code outside this pattern cannot exist: 404 like an unknown code "
        "(blank: 400)",
        json_schema_extra={"pattern": CODE_INPUT_PATTERN},
    )


class VoucherOut(BaseModel):
    code: str
    credit_omr: int
    credit_baisa: int
    description: str
    active: bool
    max_redemptions: int
    times_redeemed: int
    created_at: datetime
    updated_at: datetime


class VoucherDetail(VoucherOut):
    revoked: bool
    revoked_at: datetime | None
    accepting_redemptions: bool
    last_seq: int = Field(description="stream sequence of the voucher's latest event")


class PreviewOut(BaseModel):
    """Public: never times_redeemed or max_redemptions (anti-enumeration)."""

    code: str
    credit_omr: int
    description: str
    active: bool
    accepting_redemptions: bool


class OkOut(BaseModel):
    ok: bool = True


class ErrorOut(BaseModel):
    error: str
    fields: dict[str, str] | None = Field(
        default=None,
        description="a request body's errors (all of them): field -> what is wrong, in words",
    )


class HistoryEntry(BaseModel):
    seq: int
    type: str
    version: int
    occurred_at: datetime
    actor: dict[str, str]
    command_id: str
    event: dict[str, Any]


class HistoryOut(BaseModel):
    code: str
    events: list[HistoryEntry]
    next_after_seq: int | None = Field(description="pass as after_seq for the next page")


class RedemptionOut(BaseModel):
    redemption_id: str
    customer_id: str
    credit_omr: int
    credit_baisa: int
    redeemed_at: datetime
    seq: int
    reversed_at: datetime | None
    reversal_reason: str | None


class RedemptionsOut(BaseModel):
    code: str
    redemptions: list[RedemptionOut]
    next_after_seq: int | None


class HealthOut(BaseModel):
    status: str
    nats: str
    processor_partitions: list[int]


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, Any]


# ------------------------------------------------------------------------------ checkout


def _no_control(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


class CheckoutBody(_Strict):
    """The seed's checkout request (E1): exactly what the seed's marketplace sends; an unknown
    field is a 400. ``promo_code`` is normalised like every code."""

    plan_id: StrictStr = Field(min_length=1, max_length=100)
    tenant_id: StrictStr = Field(min_length=1, max_length=200)
    apps: list[StrictStr] = Field(default_factory=list, max_length=100)
    addons: list[StrictStr] = Field(default_factory=list, max_length=100)
    promo_code: StrictStr | None = Field(
        default=None,
        max_length=200,
        description="a voucher code, or blank for none",
        json_schema_extra={"pattern": PROMO_INPUT_PATTERN},
    )
    # The seed's later marketplace sends a deployment topology (spec §9.1): blank and
    # single-region are what this service sells; anything else (active-hot-standby, priced by
    # the later seed) is refused rather than sold at the wrong price.
    topology: Literal["", "single-region"] | None = Field(
        default=None, description="blank or single-region (the only topology offered)"
    )

    @field_validator("plan_id", "tenant_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _no_control(value)

    @field_validator("apps", "addons")
    @classmethod
    def _items(cls, value: list[str]) -> list[str]:
        for item in value:
            if not 1 <= len(item) <= 100:
                raise ValueError("each item must be 1-100 characters")
            _no_control(item)
        return value


class CheckoutOut(BaseModel):
    order_id: str
    status: str = Field(
        description="the seed's vocabulary: completed, or pending with a session_url (waiting "
        "for Stripe)"
    )
    state: str = Field(description="the ledger's finer state: completed or awaiting_payment")
    paid_by_credit: bool
    session_url: str | None = None
    credit_balance: int = Field(description="credit still available after this order, whole OMR")
    credit_balance_baisa: int
    credit_applied_omr: int
    credit_applied_baisa: int
    amount_due_omr: int
    amount_due_baisa: int
    total_omr: int
    total_baisa: int


class CreditEntryOut(BaseModel):
    id: str = Field(description="the stream sequence of the movement")
    kind: str = Field(description="granted, captured (an order payment) or revoked")
    amount_omr: int
    amount_baisa: int = Field(description="signed effect on the balance")
    reason: str
    order_id: str | None = None
    balance_after_baisa: int
    created_at: datetime


class BalanceOut(BaseModel):
    credit_omr: int = Field(description="available credit (balance minus reservations)")
    credit_baisa: int
    balance_baisa: int
    reserved_baisa: int = Field(description="held for orders awaiting payment")
    entries: list[CreditEntryOut]


class OrderOut(BaseModel):
    id: str
    customer_id: str
    tenant_id: str
    plan_id: str
    apps: list[str]
    addons: list[str]
    lines: list[dict[str, Any]]
    amount_omr: int
    amount_baisa: int
    credit_applied_baisa: int
    amount_due_baisa: int
    amount_paid_baisa: int
    paid_by_credit: bool
    status: str = Field(
        description="the seed's vocabulary: pending while waiting for Stripe, else as state"
    )
    state: str = Field(
        description="the ledger's finer state: opened, awaiting_payment, completed, failed, "
        "abandoned or refund_due"
    )
    stripe_session_id: str | None = None
    promo_code: str | None = None
    failure_reason: str | None = None
    created_at: datetime
    updated_at: datetime


class CatalogItemOut(BaseModel):
    id: str
    name: str
    price_omr: int = Field(description="whole OMR")
    price_baisa: int


class CatalogOut(BaseModel):
    """What a checkout may name: ``plan_id`` one of ``plans``, ``addons`` some of ``addons``."""

    plans: list[CatalogItemOut]
    addons: list[CatalogItemOut]


class WebhookOut(BaseModel):
    received: bool = True


# ------------------------------------------------------------------------------ admin settings

_KEY_PREFIXES = {
    "stripe_secret_key": ("sk_", "rk_"),
    "stripe_webhook_secret": ("whsec_",),
    "stripe_public_key": ("pk_",),
}


class AdminSettingsBody(_Strict):
    """The Stripe keys (the seed's E8) as a patch: an absent or null field keeps its value,
    ``""`` clears it (the seed overwrote all three, so saving the publishable key alone erased
    both secrets, B15)."""

    stripe_secret_key: StrictStr | None = Field(
        default=None,
        max_length=500,
        description='sk_... or rk_...; "" clears',
        json_schema_extra={"pattern": r"^((sk|rk)_[!-~]*)?$"},
    )
    stripe_webhook_secret: StrictStr | None = Field(
        default=None,
        max_length=500,
        description='whsec_...; "" clears',
        json_schema_extra={"pattern": r"^(whsec_[!-~]*)?$"},
    )
    stripe_public_key: StrictStr | None = Field(
        default=None,
        max_length=500,
        description='pk_...; "" clears',
        json_schema_extra={"pattern": r"^(pk_[!-~]*)?$"},
    )

    @field_validator("stripe_secret_key", "stripe_webhook_secret", "stripe_public_key")
    @classmethod
    def _key(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The messages never repeat the value: a secret pasted in the wrong field stays out of
        # the answer and the logs.
        if value is None or value == "":
            return value
        if any(not "!" <= ch <= "~" for ch in value):  # printable ASCII, no space
            raise ValueError("must be a Stripe key without spaces or control characters")
        prefixes = _KEY_PREFIXES[info.field_name or ""]
        if not value.startswith(prefixes):
            raise ValueError(f"must start with {' or '.join(prefixes)}")
        return value


class AdminSettingsOut(BaseModel):
    """The seed's E7 shape, and where each key comes from: ``env`` (an environment variable,
    which wins over a stored key), ``stored`` (set here) or ``unset``."""

    stripe_secret_key_configured: bool
    stripe_webhook_secret_configured: bool
    stripe_secret_key_last4: str = Field(description='the last four characters; "" if unset')
    stripe_webhook_secret_last4: str
    stripe_public_key: str
    updated_at: datetime | None = Field(description="when the stored keys last changed")
    stripe_secret_key_source: Literal["env", "stored", "unset"]
    stripe_webhook_secret_source: Literal["env", "stored", "unset"]
    stripe_public_key_source: Literal["env", "stored", "unset"]
    secrets_storable: bool = Field(
        description="whether a secret can be stored (encrypted under the settings key)"
    )


# ------------------------------------------------------------------ subscriptions and invoices


class SubscriptionOut(BaseModel):
    """The seed's Subscription (E4), one per Organization, built from its completed orders."""

    id: str
    customer_id: str = Field(description="the customer whose order started or last changed it")
    tenant_id: str
    plan_id: str
    status: str = Field(description="active, or past_due after a failed invoice payment")
    current_period_start: datetime
    current_period_end: datetime
    created_at: datetime
    updated_at: datetime
    amount_omr: int = Field(description="the price per month (the order's total), whole OMR")
    amount_baisa: int
    order_id: str = Field(description="the order that started or last changed it")


class InvoiceOut(BaseModel):
    """The seed's Invoice (E5), from Stripe's invoice.paid / invoice.payment_failed."""

    id: str
    customer_id: str
    tenant_id: str
    stripe_invoice_id: str
    amount_omr: int = Field(description="whole OMR, truncated (5750 baisa: 5)")
    amount_baisa: int
    currency: str
    status: str = Field(description="paid, or open while its payment has failed")
    period_start: datetime | None = None
    period_end: datetime | None = None
    pdf_url: str | None = None
    created_at: datetime


class PortalOut(BaseModel):
    portal_url: str


class RevenueOut(BaseModel):
    """The seed's revenue summary (E16), each active subscription counted once (B18)."""

    total_mrr: int = Field(description="whole OMR per month, truncated")
    total_mrr_baisa: int = Field(description="exact (the seed's was total_mrr * 1000)")
    total_customers: int = Field(description="customers who ever checked out")
    new_this_month: int = Field(description="whose first checkout was this month (UTC)")
    active_subscriptions: int
