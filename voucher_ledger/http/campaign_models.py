"""Request and response models of the campaign operations (issue #21); /openapi.json is
generated from them as from ``models``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
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

from voucher_ledger.http.models import (
    DURATION_PATTERN,
    KIND_VARIANTS,
    TIMESTAMP_RULE,
    AmountOff,
    AppliesTo,
    DiscountDuration,
    PercentOff,
    check_kind_fields,
    credit_of_kind,
    discount_terms_of,
)
from voucher_ledger.ledger.campaign_codes import PREFIX_MAX
from voucher_ledger.ledger.commands import (
    MAX_CODES_PER_GENERATION,
    MAX_VALID_FOR_SECONDS,
    PLAN_ID,
)
from voucher_ledger.ledger.durations import parse_duration
from voucher_ledger.ledger.events import DiscountTerms
from voucher_ledger.projections.timetravel import BadTimestamp, parse_timestamp

_TEXT = r"^[^\x00-\x1f\x7f]*$"
# What the API accepts as a prefix before normalisation (strip().upper()), blank for none.
_SPACE = r"[\t-\r\x1c-\x20]*"
PREFIX_INPUT_PATTERN = rf"^{_SPACE}([A-Za-z0-9]{{1,{PREFIX_MAX}}}{_SPACE})?$"


# Which fields a kind takes (as a voucher's, KIND_VARIANTS); a budget is a credit campaign's.
_CAMPAIGN_KINDS: dict[str, Any] = {
    "anyOf": [
        variant
        if variant["properties"].get("kind", {}).get("const") == "credit"
        else {**variant, "properties": {**variant["properties"], "budget_omr": {"type": "null"}}}
        for variant in KIND_VARIANTS["anyOf"]
    ]
}


class CreateCampaignBody(BaseModel):
    """A campaign of generated codes. ``kind`` says what each code gives (``credit``: a flat
    ``credit_omr`` per redemption; the discount kinds come next). Its limits hold across all
    its codes: ``max_redemptions`` (0: none) and ``budget_omr`` (the most credit it may ever
    grant; absent: none); ``code_max_redemptions`` is each code's own cap (0: none). The window
    and eligibility fields are those of single vouchers. Unknown fields are a 400."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_CAMPAIGN_KINDS)

    name: StrictStr = Field(min_length=1, max_length=200, pattern=_TEXT)
    description: StrictStr = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")
    kind: Literal["credit", "percent_off", "amount_off"] = Field(
        default="credit",
        description="what each code gives: credit (credit_omr) or a discount (percent_off or "
        "amount_off_omr, applies_to, duration, as single vouchers take them)",
    )
    credit_omr: StrictInt | None = Field(
        default=None,
        ge=0,
        validate_default=True,
        description="credit per redemption, whole OMR: required for a credit campaign",
    )
    percent_off: PercentOff = None
    amount_off_omr: AmountOff = None
    applies_to: AppliesTo = None
    duration: DiscountDuration = None
    max_redemptions: StrictInt = Field(
        default=0, ge=0, le=2**31 - 1, description="across all codes; 0 = unlimited"
    )
    budget_omr: StrictInt | None = Field(
        default=None,
        gt=0,
        le=2**52,
        description="the most credit the campaign may grant across all codes (whole OMR); "
        "null: no budget",
    )
    code_max_redemptions: StrictInt = Field(
        default=1, ge=0, le=2**31 - 1, description="each code's own cap; 0 = unlimited"
    )
    active: StrictBool = True
    starts_at: datetime | None = Field(
        default=None, description="first moment the codes redeem (ISO 8601 with a zone)"
    )
    expires_at: datetime | None = Field(
        default=None, description="the codes redeem until just before this moment"
    )
    plans: (
        list[Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=PLAN_ID)]] | None
    ) = Field(default=None, min_length=1, max_length=100)
    min_order_omr: StrictInt = Field(default=0, ge=0, le=2**31 - 1)
    new_organizations_only: StrictBool = False
    credit_valid_for: StrictStr | None = Field(
        default=None,
        max_length=64,
        description="the credit a redemption grants expires this long after it (ISO 8601 "
        "duration); null: never",
        json_schema_extra={"pattern": DURATION_PATTERN},
    )

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

    @field_validator("credit_omr")
    @classmethod
    def _at_most(cls, value: int | None, info: ValidationInfo) -> int | None:
        return credit_of_kind(value, info, "campaign")

    def discount_terms(self) -> DiscountTerms | None:
        return discount_terms_of(
            self.kind, self.percent_off, self.amount_off_omr, self.applies_to, self.duration
        )

    @model_validator(mode="after")
    def _checks(self) -> CreateCampaignBody:
        if (
            self.starts_at is not None
            and self.expires_at is not None
            and self.expires_at <= self.starts_at
        ):
            raise ValueError("expires_at must be after starts_at")
        check_kind_fields(
            self.kind, self.percent_off, self.amount_off_omr, self.applies_to, self.duration
        )
        if self.kind != "credit" and self.budget_omr is not None:
            raise ValueError(
                "budget_omr is a credit campaign's: limit a discount campaign by max_redemptions"
            )
        if self.budget_omr is not None and self.budget_omr < (self.credit_omr or 0):
            raise ValueError("budget_omr must cover at least one code's credit_omr")
        return self

    @property
    def credit_valid_for_seconds(self) -> int | None:
        return parse_duration(self.credit_valid_for) if self.credit_valid_for else None


class GenerateCodesBody(BaseModel):
    """``count`` new unique codes ``[PREFIX-]CAMPAIGN_ID-XXXXXXXXXX`` (10 random characters of
    an alphabet without look-alikes). With an ``Idempotency-Key`` a retry answers the same
    codes."""

    model_config = ConfigDict(extra="forbid")

    count: StrictInt = Field(ge=1, le=MAX_CODES_PER_GENERATION)
    prefix: StrictStr | None = Field(
        default=None,
        max_length=64,
        pattern=PREFIX_INPUT_PATTERN,
        description=f"1-{PREFIX_MAX} characters A-Z or 0-9 (upper-cased); absent or blank: none",
    )


class CodesOut(BaseModel):
    count: int
    codes: list[str]


class CampaignOut(BaseModel):
    campaign_id: str = Field(description="also the middle part of every code of the campaign")
    name: str
    description: str
    kind: str
    credit_omr: int
    credit_baisa: int
    max_redemptions: int
    budget_omr: int | None
    budget_baisa: int | None
    code_max_redemptions: int
    active: bool
    revoked: bool
    codes_issued: int
    redemptions: int = Field(description="active redemptions across all codes")
    credit_granted_omr: int
    credit_granted_baisa: int
    budget_left_baisa: int | None
    accepting_redemptions: bool
    created_at: datetime
    updated_at: datetime
    starts_at: datetime | None
    expires_at: datetime | None
    plans: list[str] | None
    min_order_omr: int
    new_organizations_only: bool
    credit_valid_for: str | None
    percent_off: int | None = None
    amount_off_omr: float | None = None
    amount_off_baisa: int | None = None
    applies_to: list[str] | None = None
    duration: str | None = None
    summary: str = ""


class TimelinePoint(BaseModel):
    at: datetime = Field(description="the hour")
    redemptions: int = Field(description="active redemptions up to the end of this hour")
    credit_granted_baisa: int = Field(description="their credit, up to the end of this hour")


class CampaignDetail(CampaignOut):
    timeline: list[TimelinePoint]
