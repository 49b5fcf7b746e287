"""Domain commands: imperative, frozen, validated at construction (codes normalised)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, field_validator

from voucher_ledger.ledger.codes import normalise_code, validate_customer_id
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Frozen, OrderLine


class _CodeCommand(Frozen):
    code: str

    @property
    def aggregate(self) -> tuple[Literal["voucher"], str]:
        return ("voucher", self.code)

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


class RecordInvoice(_WalletCommand):
    """Record a Stripe invoice of an Organization (``invoice.paid`` / ``invoice.payment_failed``)
    on the wallet of the customer whose checkout it bills. ``order_id``: that checkout's order
    (the invoice's metadata), or the invoice id when it names none."""

    type: Literal["record_invoice"] = "record_invoice"
    tenant_id: str = _ID
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
    OpenOrder
    | SettleOrder
    | GrantCredit
    | AttachSession
    | ConfirmPayment
    | AbandonOrder
    | FailOrder
    | RecordInvoice
    | QueryOrder
)

VoucherCommand = Annotated[
    IssueVoucher | RevokeVoucher | RedeemVoucher | ReverseRedemption,
    Field(discriminator="type"),
]
AnyCommand = Annotated[
    IssueVoucher | RevokeVoucher | RedeemVoucher | ReverseRedemption | WalletCommandT,
    Field(discriminator="type"),
]
