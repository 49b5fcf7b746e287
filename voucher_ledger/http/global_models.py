"""Request and response models of the global voucher operations at the hub (issue #22);
/openapi.json is generated from them as from ``models``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from voucher_ledger.config.settings import HUB_DOMAIN
from voucher_ledger.http.models import KIND_VARIANTS, IssueVoucherBody
from voucher_ledger.ledger.commands import SOVEREIGN_NAME

SovereignName = Annotated[
    StrictStr,
    Field(
        pattern=SOVEREIGN_NAME,
        description="a Sovereign's name: [a-z][a-z0-9_]{0,31}, not hub",
        json_schema_extra={"not": {"const": HUB_DOMAIN}},
    ),
]


class IssueGlobalBody(IssueVoucherBody):
    """Issue a global voucher at the hub (create only): the fields of a voucher's issue, with
    ``max_redemptions`` required, the cap across all Sovereigns together; ``sovereigns``: the
    Sovereigns allotted a first share (absent: the hub's SOVEREIGNS). Unknown fields are a
    400."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=KIND_VARIANTS)

    max_redemptions: StrictInt = Field(
        ge=1, le=2**31 - 1, description="the cap across all Sovereigns together (at least 1)"
    )
    active: Literal[True] | None = Field(
        default=None,
        description="a global voucher is live from its issue (revoke it to stop it): true or "
        "absent",
    )
    sovereigns: list[SovereignName] | None = Field(
        default=None,
        max_length=1000,
        description="the Sovereigns given a first share of the cap; absent: every name in the "
        "hub's SOVEREIGNS",
        json_schema_extra={"uniqueItems": True},
    )

    @model_validator(mode="after")
    def _global_rules(self) -> IssueGlobalBody:
        if self.sovereigns is not None:
            if len(set(self.sovereigns)) != len(self.sovereigns):
                raise ValueError("sovereigns names each Sovereign once")
            if HUB_DOMAIN in self.sovereigns:
                raise ValueError(f"sovereigns: {HUB_DOMAIN!r} is the hub, not a Sovereign")
        return self


class RecallBody(BaseModel):
    """Ask a Sovereign to give back slots of its share it has not used."""

    model_config = ConfigDict(extra="forbid")

    sovereign: SovereignName
    slots: StrictInt = Field(ge=1, le=2**31 - 1, description="how many unused slots to ask back")


class GlobalShareOut(BaseModel):
    sovereign: str
    allotted: int = Field(description="all slots of the cap ever given to the Sovereign")
    released: int = Field(description="all slots it gave back (a recall, the revocation)")
    redeemed: int = Field(description="its standing redemptions, as last observed on the trail")
    unused: int = Field(description="allotted - released - redeemed")
    requested: int = Field(description="all slots the hub asked back")
    trail_seq: int = Field(description="the hub's trail position the figures were read at")


class GlobalOut(BaseModel):
    code: str
    kind: Literal["credit", "percent_off", "amount_off"] = "credit"
    credit_omr: int
    credit_baisa: int
    percent_off: int | None = None
    amount_off_omr: float | None = None
    amount_off_baisa: int | None = None
    applies_to: list[str] | None = None
    duration: str | None = None
    summary: str = Field(description='what it gives, e.g. "25 OMR credit"')
    description: str
    max_redemptions: int = Field(description="the cap across all Sovereigns")
    redeemed: int = Field(description="all Sovereigns' standing redemptions known to the hub")
    revoked: bool
    pool: int = Field(description="slots of the cap no Sovereign holds")
    share: int = Field(description="the allocation policy's share per Sovereign")
    starts_at: datetime | None
    expires_at: datetime | None
    plans: list[str] | None
    min_order_omr: int
    min_order_baisa: int
    new_organizations_only: bool
    credit_valid_for: str | None
    created_at: datetime
    updated_at: datetime
    last_seq: int = Field(description="stream sequence of the global voucher's latest event")
    sovereigns: list[GlobalShareOut]
