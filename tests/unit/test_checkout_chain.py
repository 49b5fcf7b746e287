"""The checkout's side of the chained placement (issue #19): the redemption it sends carries
the order's placement; the placement's reply, when the processor chained it, is taken from the
redemption's reply, and a placement refused because the wallet's history is on hold is the
503 of a ledger that cannot decide (as the bus makes it of any command on hold). A fake bus
stands for the ledger."""

from __future__ import annotations

from typing import Any, cast

import pytest

from tests.unit.test_checkout_want_share import ACTOR, place, service
from voucher_ledger.billing.checkout import CheckoutError, place_command_id
from voucher_ledger.commands.wire import ON_HOLD, Accepted, Rejected, Then
from voucher_ledger.ledger.commands import RedeemVoucher
from voucher_ledger.ledger.voucher import RedemptionView


class ChainBus:
    """Answers the redemption as accepted, earning 3 OMR, with ``then`` as its placement's
    reply; keeps what was sent with it."""

    def __init__(self, then: Accepted | Rejected | None) -> None:
        self.then = then
        self.sent: list[tuple[Any, Then | None]] = []

    async def send(self, command: Any, *, then: Then | None = None, **_: Any) -> Accepted:
        assert isinstance(command, RedeemVoucher)
        self.sent.append((command, then))
        redemption = RedemptionView(
            customer_id=command.customer_id, redemption_id="r-1", credit_baisa=3000, seq=4
        )
        return Accepted(
            command_id="redeem-o1",
            command_type="redeem_voucher",
            seq=4,
            redemption=redemption,
            then=self.then,
        )


PLACED = Accepted(command_id="place-o1", command_type="place_order", seq=5)
REFUSED = Rejected(command_id="place-o1", reason="not_member", message="not a member")


@pytest.mark.parametrize("then", [PLACED, REFUSED, None], ids=["placed", "refused", "not chained"])
async def test_the_redemption_carries_the_placement_and_its_reply_comes_back_in_it(
    then: Accepted | Rejected | None,
) -> None:
    bus = ChainBus(then)
    order = place()
    placed, reply = await service(cast(Any, bus))._redeem(order, ACTOR)
    [(_, sent)] = bus.sent
    assert sent is not None
    assert sent.command_id == place_command_id("o1")
    assert sent.command == order
    assert reply == then
    assert placed.grant is not None
    assert (placed.grant.redemption_id, placed.grant.amount_baisa) == ("r-1", 3000)


async def test_a_chained_placement_on_hold_is_a_503_like_any_command_on_hold() -> None:
    on_hold = Rejected(command_id="place-o1", reason=ON_HOLD, message="history on hold")
    with pytest.raises(CheckoutError) as refused:
        await service(cast(Any, ChainBus(on_hold)))._redeem(place(), ACTOR)
    assert refused.value.status == 503
    assert refused.value.reason is None  # not a refusal of the order: nothing recorded
