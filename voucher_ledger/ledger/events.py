"""Events: frozen pydantic models with a ``type`` tag and a schema ``version``, in an envelope.

Wire format (the JSON body of a JetStream message on ``<prefix>.events.voucher.<CODE>``)::

    {"event_id": "...", "aggregate": "voucher", "aggregate_id": "CODE",
     "occurred_at": "2026-11-21T12:00:00Z", "actor": {"sub": "...", "role": "..."},
     "command_id": "...", "event": {"type": "voucher.redeemed", "version": 1, ...}}

Old versions are upcast on read by :data:`UPCASTERS` before validation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


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


VoucherEvent = Annotated[
    VoucherIssued | VoucherRevoked | VoucherRedeemed | RedemptionReversed,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[type[Frozen], ...] = (
    VoucherIssued,
    VoucherRevoked,
    VoucherRedeemed,
    RedemptionReversed,
)


class EventEnvelope(Frozen):
    event_id: str
    aggregate: Literal["voucher"] = "voucher"
    aggregate_id: str
    occurred_at: datetime
    actor: Actor
    command_id: str
    # Digest of the causing command's payload: a retried command id is matched against it.
    command_fingerprint: str = ""
    event: VoucherEvent


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
    import json

    doc = json.loads(raw)
    if isinstance(doc, dict) and isinstance(doc.get("event"), dict):
        doc["event"] = upcast(doc["event"])
    return _ENVELOPE.validate_python(doc)


def encode_envelope(envelope: EventEnvelope) -> bytes:
    return envelope.model_dump_json().encode()
