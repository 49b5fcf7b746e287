"""Request and response models: the handlers validate with them and /openapi.json is generated
from them, so the documentation cannot drift from the code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _In(BaseModel):
    # Unknown fields are ignored, as the seed's clients send times_redeemed / created_at back.
    model_config = ConfigDict(extra="ignore")


class IssueVoucherBody(_In):
    """Create, update or restore a voucher. Omitted optional fields keep their current value
    on an update and take the default on a create (active true, unlimited, no description)."""

    code: StrictStr = Field(description="normalised with strip().upper(); [A-Z0-9_-], 3-64")
    credit_omr: StrictInt = Field(gt=0, description="credit per redemption, whole OMR")
    description: StrictStr | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")
    active: StrictBool | None = None
    max_redemptions: StrictInt | None = Field(
        default=None, ge=0, le=2**31 - 1, description="0 = unlimited"
    )


class PreviewBody(_In):
    code: StrictStr


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
