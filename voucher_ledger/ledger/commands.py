"""Domain commands: imperative, frozen, validated at construction (codes normalised)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import Field, field_validator

from voucher_ledger.ledger.codes import normalise_code, validate_customer_id
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Frozen


class _CodeCommand(Frozen):
    code: str

    @field_validator("code", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> str:
        return normalise_code(value)

    def fingerprint(self) -> str:
        """A digest of the payload, to detect a command id reused for a different command."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]


class IssueVoucher(_CodeCommand):
    """Upsert: create, update or restore a revoked code.

    A field left out (None) keeps the voucher's current value on an update, and takes the
    default on a create (description "", active true, max_redemptions 0 = unlimited). The seed
    service replaced every field, so a missing ``active`` silently deactivated a voucher (B9).
    """

    type: Literal["issue_voucher"] = "issue_voucher"
    credit_baisa: int = Field(gt=0, strict=True)
    description: str | None = Field(default=None, max_length=2000)
    active: bool | None = Field(default=None, strict=True)
    max_redemptions: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)

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
    type: Literal["redeem_voucher"] = "redeem_voucher"
    customer_id: str

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


VoucherCommand = Annotated[
    IssueVoucher | RevokeVoucher | RedeemVoucher | ReverseRedemption,
    Field(discriminator="type"),
]
