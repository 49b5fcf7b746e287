"""Request and response models: the handlers validate with them and /openapi.json is generated
from them, so the documentation cannot drift from the code."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from voucher_ledger.ledger.codes import (
    CODE_INPUT_PATTERN,
    CODE_RULE,
    PROMO_INPUT_PATTERN,
    normalise_code,
)
from voucher_ledger.ledger.commands import MAX_VALID_FOR_SECONDS, PLAN_ID
from voucher_ledger.ledger.durations import parse_discount_duration, parse_duration
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import DiscountTerms
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.projections.timetravel import BadTimestamp, parse_timestamp

_TIME = (
    r"[0-9]{1,7}[Hh]([0-9]{1,9}[Mm])?([0-9]{1,10}[Ss])?|[0-9]{1,9}[Mm]([0-9]{1,10}[Ss])?"
    r"|[0-9]{1,10}[Ss]"
)
# What parse_duration reads (ledger/durations.py), for the schema: weeks and/or days and/or a
# time part (hours, minutes, seconds, in that order).
DURATION_PATTERN = (
    rf"^[Pp](([0-9]{{1,6}}[Ww]([0-9]{{1,6}}[Dd])?|[0-9]{{1,6}}[Dd])([Tt]({_TIME}))?"
    rf"|[Tt]({_TIME}))$"
)
TIMESTAMP_RULE = "must be an ISO 8601 timestamp with a time zone, e.g. 2026-11-21T12:00:00Z"


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


SUMMARY = 'what it gives, in words, e.g. "20% off add-ons for 3 months"'


# A discount's duration as the schema says it: once, forever, or an ISO 8601 duration of more
# than nothing (ledger/durations.py parse_discount_duration decides).
DISCOUNT_DURATION_PATTERN = (
    r"^([Oo][Nn][Cc][Ee]|[Ff][Oo][Rr][Ee][Vv][Ee][Rr]|P(?=[^T]*[1-9]|.*T.*[1-9])(\d{1,3}Y)?"
    r"(\d{1,4}M)?(\d{1,6}W)?(\d{1,6}D)?(T(?=\d)(\d{1,7}H)?(\d{1,9}M)?(\d{1,10}S)?)?)$"
)
_NOTHING = {"type": "null"}
# Which fields a kind takes (the schema of what _discount_fields and the credit check decide).
KIND_VARIANTS: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["credit_omr"],
            "properties": {
                "kind": {"const": "credit"},
                "credit_omr": {"type": "integer", "minimum": 1},
                "percent_off": _NOTHING,
                "amount_off_omr": _NOTHING,
                "applies_to": _NOTHING,
                "duration": _NOTHING,
            },
        },
        {
            "required": ["kind", "percent_off"],
            "properties": {
                "kind": {"const": "percent_off"},
                "percent_off": {"type": "integer", "minimum": 1, "maximum": 100},
                "credit_omr": {"anyOf": [{"const": 0}, _NOTHING]},
                "amount_off_omr": _NOTHING,
            },
        },
        {
            "required": ["kind", "amount_off_omr"],
            "properties": {
                "kind": {"const": "amount_off"},
                "amount_off_omr": {"type": "integer", "minimum": 1},
                "credit_omr": {"anyOf": [{"const": 0}, _NOTHING]},
                "percent_off": _NOTHING,
            },
        },
    ]
}


# A discount's fields, as the voucher and the campaign bodies take them (issue #21).
PercentOff = Annotated[
    StrictInt | None, Field(ge=1, le=100, description="percent_off: 1-100 percent off the lines")
]
AmountOff = Annotated[
    StrictInt | None, Field(gt=0, le=10**9, description="amount_off: whole OMR off the lines")
]
AppliesTo = Annotated[
    list[Literal["plans", "addons", "apps"]] | None,
    Field(
        min_length=1,
        max_length=3,
        description="a discount applies to the order lines of these kinds; null: all of them",
        json_schema_extra={"uniqueItems": True},
    ),
]
DiscountDuration = Annotated[
    StrictStr | None,
    Field(
        max_length=64,
        description='a discount lasts "once" (the redeeming order; the default), an ISO 8601 '
        "duration after the redemption (every checkout of the Organization within it, e.g. "
        'P3M), or "forever"',
        json_schema_extra={"pattern": DISCOUNT_DURATION_PATTERN},
    ),
    AfterValidator(lambda value: None if value is None else parse_discount_duration(value)),
]


def credit_of_kind(value: int | None, info: ValidationInfo, what: str) -> int | None:
    """``credit_omr`` as the body's ``kind`` wants it (validated after ``kind``): required and
    more than 0 for credit, none for a discount; at most the context's ``max_credit_omr``."""
    credit = info.data.get("kind", "credit") == "credit"
    if value is None:
        if credit:
            raise ValueError(f"is required for a credit {what}")
        return None
    if credit and value <= 0:
        raise ValueError("must be greater than 0")
    if not credit and value:
        raise ValueError(f"a discount {what} gives no credit: leave it out")
    limit = (info.context or {}).get("max_credit_omr")
    if limit is not None and value > limit:
        raise ValueError(f"must be {limit} or less")
    return value


def check_kind_fields(
    kind: str,
    percent_off: int | None,
    amount_off_omr: int | None,
    applies_to: Sequence[str] | None,
    duration: str | None,
) -> None:
    """The fields a voucher's or a campaign's kind takes (ValueError naming them if not)."""
    given = {
        name
        for name, value in (
            ("percent_off", percent_off),
            ("amount_off_omr", amount_off_omr),
            ("applies_to", applies_to),
            ("duration", duration),
        )
        if value is not None
    }
    if kind == "credit" and given:
        raise ValueError(f"{', '.join(sorted(given))}: only for a discount (kind)")
    if kind == "percent_off" and (percent_off is None or amount_off_omr is not None):
        raise ValueError("a percent_off discount takes percent_off (1-100), no amount_off_omr")
    if kind == "amount_off" and (amount_off_omr is None or percent_off is not None):
        raise ValueError("an amount_off discount takes amount_off_omr, no percent_off")
    if applies_to is not None and len(set(applies_to)) != len(applies_to):
        raise ValueError("applies_to names plans, addons or apps, each once")


def discount_terms_of(
    kind: str,
    percent_off: int | None,
    amount_off_omr: int | None,
    applies_to: list[Literal["plans", "addons", "apps"]] | None,
    duration: str | None,
) -> DiscountTerms | None:
    if kind not in ("percent_off", "amount_off"):
        return None
    return DiscountTerms(
        kind="percent_off" if kind == "percent_off" else "amount_off",
        percent_off=percent_off,
        amount_off_baisa=amount_off_omr * 1000 if amount_off_omr else None,
        applies_to=applies_to,
        duration=duration or "once",
    )


class IssueVoucherBody(_Strict):
    """Create, update or restore a voucher. Omitted optional fields keep their current value
    on an update and take the default on a create (active true, unlimited, no description).
    A voucher as listed may be posted back whole: its read-only fields are ignored; any other
    unknown field is a 400."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=KIND_VARIANTS)

    code: StrictStr = Field(
        description="normalised with strip().upper(); [A-Z0-9_-], 3-64",
        json_schema_extra={"pattern": CODE_INPUT_PATTERN},
    )
    kind: Literal["credit", "percent_off", "amount_off"] = Field(
        default="credit",
        description="credit (a flat credit per redemption, the default), percent_off or "
        "amount_off (a discount, issue #21)",
    )
    credit_omr: StrictInt | None = Field(
        default=None,
        ge=0,
        validate_default=True,
        description="credit per redemption, whole OMR: required for a credit voucher, none "
        "for a discount",
    )
    percent_off: PercentOff = None
    amount_off_omr: AmountOff = None
    applies_to: AppliesTo = None
    duration: DiscountDuration = None
    description: StrictStr | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")
    active: StrictBool | None = None
    max_redemptions: StrictInt | None = Field(
        default=None, ge=0, le=2**31 - 1, description="0 = unlimited"
    )
    starts_at: datetime | None = Field(
        default=None,
        description="first moment the code redeems (ISO 8601 with a zone); null: no start",
    )
    expires_at: datetime | None = Field(
        default=None,
        description="the code redeems until just before this moment (ISO 8601 with a zone, "
        "after starts_at); null: no end",
    )
    plans: (
        list[Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=PLAN_ID)]] | None
    ) = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="only a checkout of one of these plans redeems the code; null: any plan",
    )
    min_order_omr: StrictInt | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="only an order of at least this total before credit (whole OMR); 0 or "
        "null: any",
    )
    new_organizations_only: StrictBool | None = Field(
        default=None,
        description="only an Organization without a completed order redeems the code",
    )
    credit_valid_for: StrictStr | None = Field(
        default=None,
        max_length=64,
        description="the credit a redemption grants expires this long after it: an ISO 8601 "
        "duration of weeks, days, hours, minutes or seconds (P90D, PT10S); null: never",
        json_schema_extra={"pattern": DURATION_PATTERN},
    )
    credit_baisa: Any = _read_only("credit_omr in baisa")
    amount_off_baisa: Any = _read_only("amount_off_omr in baisa")
    summary: Any = _read_only("what the voucher gives, in words")
    min_order_baisa: Any = _read_only("min_order_omr in baisa")
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

    @field_validator("starts_at", "expires_at", mode="before")
    @classmethod
    def _timestamp(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        name = str(info.field_name)
        if not isinstance(value, str):
            raise ValueError(TIMESTAMP_RULE)
        try:
            return parse_timestamp(value, name=name)
        except BadTimestamp as exc:
            raise ValueError(str(exc).removeprefix(f"{name} ")) from exc

    @field_validator("credit_valid_for")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is None:
            return None
        seconds = parse_duration(value)
        if not 0 < seconds <= MAX_VALID_FOR_SECONDS:
            raise ValueError("must be longer than 0 seconds and at most 100 years")
        return value

    @property
    def credit_valid_for_seconds(self) -> int | None:
        return parse_duration(self.credit_valid_for) if self.credit_valid_for else None

    @field_validator("plans")
    @classmethod
    def _plan_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for item in value:
            if not 1 <= len(item) <= 100:
                raise ValueError("each plan id must be 1-100 characters")
            _no_control(item)
        return value

    @model_validator(mode="after")
    def _window(self) -> IssueVoucherBody:
        if (
            self.starts_at is not None
            and self.expires_at is not None
            and self.expires_at <= self.starts_at
        ):
            raise ValueError("expires_at must be after starts_at")
        return self

    def cleared(self) -> list[str]:
        """The rules set to null explicitly (an update sets them back to none); a field left
        out keeps its value."""
        given = self.model_fields_set
        out: list[str] = [
            name
            for name in ("starts_at", "expires_at", "plans", "new_organizations_only")
            if name in given and getattr(self, name) is None
        ]
        if "min_order_omr" in given and self.min_order_omr is None:
            out.append("min_order_baisa")
        if "credit_valid_for" in given and self.credit_valid_for is None:
            out.append("credit_valid_for_seconds")
        return out

    @field_validator("credit_omr")
    @classmethod
    def _at_most(cls, value: int | None, info: ValidationInfo) -> int | None:
        return credit_of_kind(value, info, "voucher")

    @model_validator(mode="after")
    def _discount_fields(self) -> IssueVoucherBody:
        check_kind_fields(
            self.kind, self.percent_off, self.amount_off_omr, self.applies_to, self.duration
        )
        return self

    def discount_terms(self) -> DiscountTerms | None:
        return discount_terms_of(
            self.kind, self.percent_off, self.amount_off_omr, self.applies_to, self.duration
        )

    def terms(self) -> dict[str, Any]:
        """What the body says the code gives and when and for whom it redeems, as the
        ``IssueVoucher`` fields (a single voucher's issue adds ``active`` and ``clear``; a
        global voucher's issue takes these as its terms)."""
        return {
            "code": self.code,
            "credit_baisa": (self.credit_omr or 0) * BAISA,
            "discount": self.discount_terms(),
            "description": self.description,
            "max_redemptions": self.max_redemptions,
            "starts_at": self.starts_at,
            "expires_at": self.expires_at,
            "plans": self.plans,
            "min_order_baisa": self.min_order_omr * BAISA
            if self.min_order_omr is not None
            else None,
            "new_organizations_only": self.new_organizations_only,
            "credit_valid_for_seconds": self.credit_valid_for_seconds,
        }


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
    starts_at: datetime | None = Field(description="redeems from this moment; null: no start")
    expires_at: datetime | None = Field(description="redeems until before this; null: no end")
    plans: list[str] | None = Field(description="the plans it redeems for; null: any")
    min_order_omr: int = Field(description="smallest order total before credit; 0: any")
    min_order_baisa: int
    new_organizations_only: bool
    credit_valid_for: str | None = Field(
        description="how long a redemption's credit lasts (ISO 8601 duration); null: forever"
    )
    kind: Literal["credit", "percent_off", "amount_off"] = "credit"
    percent_off: int | None = None
    amount_off_omr: float | None = None
    amount_off_baisa: int | None = None
    applies_to: list[str] | None = None
    duration: str | None = Field(default=None, description="a discount's: once, ISO 8601, forever")
    summary: str = Field(
        default="", description='what it gives, e.g. "20% off add-ons for 3 months"'
    )


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
    starts_at: datetime | None = Field(description="redeems from this moment; null: no start")
    expires_at: datetime | None = Field(description="redeems until before this; null: no end")
    kind: Literal["credit", "percent_off", "amount_off"] = "credit"
    summary: str = Field(
        default="", description='what it gives, e.g. "20% off add-ons for 3 months"'
    )
    reason: Literal["expired", "not_started", "capped", "inactive", "share_exhausted"] | None = (
        Field(
            default=None,
            description="why it does not redeem now (with the 410): expired (ended on "
            "expires_at), not_started (starts on starts_at), capped, inactive, share_exhausted "
            "(a global code whose share on this Sovereign is used up for now: try again "
            "later); absent with a 200",
        )
    )


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
    customer_id: str = Field(description="the account: the Organization it was redeemed for")
    user_id: str = Field(description="the user who redeemed it")
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
    discount_omr: float = Field(default=0, description="off the total before credit (#21)")
    discount_baisa: int = 0


class CreditEntryOut(BaseModel):
    id: str = Field(description="the stream sequence of the movement")
    kind: str = Field(
        description="granted, captured (an order payment), revoked or expired (reason "
        "credit-expired)"
    )
    amount_omr: int
    amount_baisa: int = Field(description="signed effect on the balance")
    reason: str
    order_id: str | None = None
    balance_after_baisa: int
    created_at: datetime


class ExpiringCreditOut(BaseModel):
    amount_omr: int
    amount_baisa: int = Field(description="what is left of the grant, spendable until then")
    expires_at: datetime
    code: str = Field(description="the voucher that granted it")


class BalanceOut(BaseModel):
    credit_omr: int = Field(
        description="available credit (balance minus reservations, never expired credit)"
    )
    credit_baisa: int
    balance_baisa: int = Field(description="the account's credit, reservations included")
    reserved_baisa: int = Field(description="held for orders awaiting payment")
    entries: list[CreditEntryOut]
    expiring: list[ExpiringCreditOut] = Field(
        default_factory=list,
        description="credit that expires, soonest first: how much and when (the rest never "
        "expires)",
    )


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
    discount_omr: float = Field(default=0, description="off the amount before credit (#21)")
    discount_baisa: int = 0
    discount_code: str | None = None


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
