"""What travels on the command stream, and the replies processors send back."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator

from voucher_ledger.ledger.campaign import CampaignView
from voucher_ledger.ledger.codes import validate_command_id
from voucher_ledger.ledger.commands import AnyCommand, PlaceOrder
from voucher_ledger.ledger.events import Actor, Frozen, isoformat_z
from voucher_ledger.ledger.global_voucher import GlobalView
from voucher_ledger.ledger.voucher import RedemptionView, VoucherView
from voucher_ledger.ledger.wallet import OrderView, WalletView

REPLY_HEADER = "Vl-Reply-To"
# The reason of the refusal a command gets when its aggregate's history fails the ledger's
# signature check (the bus raises ``LedgerOnHold`` for it: 503 for the HTTP client).
ON_HOLD = "ledger_on_hold"


class Then(Frozen):
    """A checkout's placement, chained to its redemption (issue #19): once the voucher has
    accepted the redemption (or replays it), the processor that decided it places the order
    itself, with the redemption's terms (:func:`voucher_ledger.commands.chain.placement_after`),
    and the one reply carries both outcomes. Not part of the command: a retry without it is the
    same command (its fingerprint does not see it)."""

    command_id: str
    command: PlaceOrder

    @field_validator("command_id", mode="before")
    @classmethod
    def _command_id(cls, value: object) -> str:
        return validate_command_id(value)


class CommandEnvelope(Frozen):
    command_id: str
    actor: Actor
    sent_at: datetime
    # After this instant the sender has stopped waiting: a processor that only gets to the
    # command later refuses it ("expired") instead of applying it behind the caller's back.
    # A retry with the same command id is a new envelope with a new deadline.
    expires_at: datetime | None = None
    command: AnyCommand
    # A redemption's chained placement (the chained command has the same actor and deadline).
    then: Then | None = None

    @field_validator("command_id", mode="before")
    @classmethod
    def _command_id(cls, value: object) -> str:
        return validate_command_id(value)


def encode_command(
    command_id: str,
    actor: Actor,
    sent_at: datetime,
    expires_at: datetime,
    command: AnyCommand,
    then: Then | None = None,
) -> bytes:
    """The JSON of a :class:`CommandEnvelope` of these (already validated) parts, written
    without building the envelope model (the sender's hot path; a unit test holds it equal to
    ``CommandEnvelope(...).model_dump_json()``)."""
    return (
        f'{{"command_id":{json.dumps(command_id)},"actor":{actor.model_dump_json()},'
        f'"sent_at":"{isoformat_z(sent_at)}","expires_at":"{isoformat_z(expires_at)}",'
        f'"command":{command.model_dump_json()},'
        f'"then":{"null" if then is None else then.model_dump_json()}}}'
    ).encode()


class Accepted(Frozen):
    status: Literal["accepted"] = "accepted"
    command_id: str
    command_type: str
    seq: int
    voucher: VoucherView | None = None
    redemption: RedemptionView | None = None
    # Wallet commands: the wallet and the command's order as they are now (after this command).
    wallet: WalletView | None = None
    order: OrderView | None = None
    # Campaign commands (and a campaign code's): the campaign as the command left it.
    campaign: CampaignView | None = None
    # Global voucher commands at the hub (issue #22): the global voucher as it is now.
    global_voucher: GlobalView | None = None
    # A redemption with a chained placement (:class:`Then`): the placement's own reply.
    then: Annotated[Accepted | Rejected, Field(discriminator="status")] | None = None


class Rejected(Frozen):
    status: Literal["rejected"] = "rejected"
    command_id: str
    reason: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


Accepted.model_rebuild()

Reply = Annotated[Accepted | Rejected, Field(discriminator="status")]
REPLY_ADAPTER: TypeAdapter[Accepted | Rejected] = TypeAdapter(Reply)
