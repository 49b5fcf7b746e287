"""Events: frozen pydantic models with a ``type`` tag and a schema ``version``, in an envelope.

Two aggregates write events: vouchers (``<prefix>.events.voucher.<CODE>``) and customer wallets
(``<prefix>.events.wallet.<ACCOUNT>``, credit movements, the customer's orders and the Stripe
invoices of the Organizations it ordered for).

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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Actor(Frozen):
    """Who caused a change: the JWT subject and role (or a system component)."""

    sub: str
    role: str


SYSTEM_ACTOR = Actor(sub="system", role="system")


class VoucherIssued(Frozen):
    """A voucher was created, updated (full replace) or restored from revocation (upsert)."""

    type: Literal["voucher.issued"] = "voucher.issued"
    version: Literal[1] = 1
    code: str
    credit_baisa: int
    description: str
    active: bool
    max_redemptions: int
    change: Literal["created", "updated", "restored"]


class VoucherRevoked(Frozen):
    """Soft delete: the code stops resolving; its history and redemption count are kept."""

    type: Literal["voucher.revoked"] = "voucher.revoked"
    version: Literal[1] = 1
    code: str


class VoucherRedeemed(Frozen):
    """A customer took one redemption slot and earned ``credit_baisa`` of credit."""

    type: Literal["voucher.redeemed"] = "voucher.redeemed"
    version: Literal[1] = 1
    code: str
    customer_id: str
    redemption_id: str
    credit_baisa: int


class RedemptionReversed(Frozen):
    """A redemption was undone (checkout compensation or admin); the slot is free again."""

    type: Literal["voucher.redemption_reversed"] = "voucher.redemption_reversed"
    version: Literal[1] = 1
    code: str
    customer_id: str
    redemption_id: str
    reason: str


class _WalletEvent(Frozen):
    customer_id: str


class CreditGranted(_WalletEvent):
    """Credit earned by a voucher redemption. At most once per redemption id."""

    type: Literal["wallet.credit_granted"] = "wallet.credit_granted"
    version: Literal[1] = 1
    redemption_id: str
    code: str
    order_id: str
    amount_baisa: int


class GrantRevoked(_WalletEvent):
    """A grant taken back because its checkout failed; the voucher slot is given back too."""

    type: Literal["wallet.grant_revoked"] = "wallet.grant_revoked"
    version: Literal[1] = 1
    redemption_id: str
    code: str
    order_id: str
    amount_baisa: int
    reason: str


class CreditReserved(_WalletEvent):
    """Credit held for an order: no longer available, not spent yet."""

    type: Literal["wallet.credit_reserved"] = "wallet.credit_reserved"
    version: Literal[1] = 1
    order_id: str
    amount_baisa: int


class CreditCaptured(_WalletEvent):
    """An order's reservation spent (the order was paid)."""

    type: Literal["wallet.credit_captured"] = "wallet.credit_captured"
    version: Literal[1] = 1
    order_id: str
    amount_baisa: int


class CreditReleased(_WalletEvent):
    """An order's reservation returned to the available credit (payment abandoned or failed)."""

    type: Literal["wallet.credit_released"] = "wallet.credit_released"
    version: Literal[1] = 1
    order_id: str
    amount_baisa: int
    reason: str


class OrderLine(Frozen):
    kind: Literal["plan", "addon"]
    id: str
    name: str
    amount_baisa: int


class OrderOpened(_WalletEvent):
    """A checkout started: the priced order, before any credit or payment."""

    type: Literal["order.opened"] = "order.opened"
    version: Literal[1] = 1
    order_id: str
    tenant_id: str
    plan_id: str
    apps: list[str]
    addons: list[str]
    promo_code: str | None
    lines: list[OrderLine]
    total_baisa: int


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


class InvoiceRecorded(_WalletEvent):
    """Stripe reported an invoice of the customer's Organization paid, or its payment failed
    (``invoice.paid`` / ``invoice.payment_failed``). Once per invoice and outcome; a failure
    after the invoice was paid is not recorded."""

    type: Literal["invoice.recorded"] = "invoice.recorded"
    version: Literal[1] = 1
    tenant_id: str
    stripe_invoice_id: str
    stripe_customer_id: str | None
    outcome: Literal["paid", "payment_failed"]
    amount_baisa: int  # paid: what was paid; payment_failed: what is due
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    pdf_url: str | None


VoucherEvent = Annotated[
    VoucherIssued | VoucherRevoked | VoucherRedeemed | RedemptionReversed,
    Field(discriminator="type"),
]
WalletEventT = (
    CreditGranted
    | GrantRevoked
    | CreditReserved
    | CreditCaptured
    | CreditReleased
    | OrderOpened
    | OrderPaymentRequested
    | OrderSessionCreated
    | OrderCompleted
    | OrderFailed
    | OrderAbandoned
    | OrderRefundDue
    | InvoiceRecorded
)
AnyEvent = Annotated[
    VoucherIssued | VoucherRevoked | VoucherRedeemed | RedemptionReversed | WalletEventT,
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
    OrderOpened,
    OrderPaymentRequested,
    OrderSessionCreated,
    OrderCompleted,
    OrderFailed,
    OrderAbandoned,
    OrderRefundDue,
    InvoiceRecorded,
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
    aggregate: Literal["voucher", "wallet"] = "voucher"
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
    """An envelope as stored: with its stream sequence (the global position in the event stream)."""

    seq: int
    envelope: EventEnvelope


# (type, version) -> function turning that version's dict into the next version's dict.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
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
