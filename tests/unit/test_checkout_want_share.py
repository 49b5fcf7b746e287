"""The checkout's demand signal (issue #22): a redemption refused for want of slots on this
Sovereign makes it send ``WantShare`` in the background, and the customer's 400 stays as it was,
whatever becomes of the signal. A fake bus stands for the ledger."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from voucher_ledger.billing.checkout import CheckoutError, CheckoutService, wants_share
from voucher_ledger.commands.bus import BusUnavailable, CommandBus
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.ledger.commands import PlaceOrder, RedeemVoucher, WantShare
from voucher_ledger.ledger.errors import (
    AlreadyRedeemed,
    CapReached,
    ShareExhausted,
    VoucherNotFound,
)
from voucher_ledger.ledger.events import Actor, OrderLine

ACTOR = Actor(sub="u1", role="customer")
USED_UP = ShareExhausted("GLOBAL1", 25)


def rejected(error: Any) -> Rejected:
    details = {k: v for k, v in error.context.items() if isinstance(v, str | int | bool)}
    return Rejected(command_id="c", reason=error.reason, message=error.message, details=details)


class FakeBus:
    """Answers a redemption with ``refusal``; a WantShare waits for ``release`` (so the test
    sees the refusal return before it), then answers ``want_reply`` or raises it."""

    def __init__(self, refusal: Rejected, want_reply: Any) -> None:
        self.refusal = refusal
        self.want_reply = want_reply
        self.sent: list[Any] = []
        self.release = asyncio.Event()
        self.wanted = asyncio.Event()

    async def send(self, command: Any, **_: Any) -> Accepted | Rejected:
        self.sent.append(command)
        if isinstance(command, RedeemVoucher):
            return self.refusal
        assert isinstance(command, WantShare)
        await self.release.wait()
        self.wanted.set()
        if isinstance(self.want_reply, Exception):
            raise self.want_reply
        return cast(Accepted | Rejected, self.want_reply)


def service(bus: FakeBus) -> CheckoutService:
    async def no_stripe() -> None:
        return None

    return CheckoutService(
        cast(CommandBus, bus),
        cast(Any, None),
        no_stripe,
        command_timeout=1.0,
        recovery_after=60.0,
    )


def place() -> PlaceOrder:
    return PlaceOrder(
        customer_id="org1",
        order_id="o1",
        user_id="u1",
        tenant_id="org1",
        plan_id="starter",
        promo_code="GLOBAL1",
        lines=[OrderLine(kind="plan", id="starter", name="Starter", amount_baisa=5000)],
        total_baisa=5000,
    )


@pytest.mark.parametrize(
    "want_reply",
    [
        Accepted(command_id="w", command_type="want_share", seq=7),
        Rejected(command_id="w", reason="invalid_input", message="not a global voucher"),
        BusUnavailable("not connected to NATS"),
    ],
    ids=["accepted", "refused", "bus down"],
)
async def test_a_refusal_for_want_of_slots_sends_want_share_and_the_400_is_unchanged(
    want_reply: Any,
) -> None:
    bus = FakeBus(rejected(USED_UP), want_reply)
    checkout = service(bus)
    with pytest.raises(CheckoutError) as raised:  # (a checkout waiting for the signal: timeout)
        await asyncio.wait_for(checkout._redeem(place(), ACTOR), 5)
    # The refusal came back before the signal was answered: it is not waited for.
    assert not bus.wanted.is_set()
    assert raised.value.status == 400
    assert raised.value.reason == "invalid_promo"
    assert raised.value.message == f"invalid promo code: {USED_UP.message}"
    await asyncio.sleep(0)  # the background task has started
    assert [type(c).__name__ for c in bus.sent] == ["RedeemVoucher", "WantShare"]
    assert bus.sent[1].code == "GLOBAL1"
    assert len(checkout._wants) == 1
    bus.release.set()
    await asyncio.wait_for(bus.wanted.wait(), 5)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not checkout._wants  # done, and nothing else sent
    assert len(bus.sent) == 2


async def test_a_storm_of_refusals_sends_one_want_while_one_is_on_its_way() -> None:
    bus = FakeBus(rejected(USED_UP), Accepted(command_id="w", command_type="want_share", seq=7))
    checkout = service(bus)
    for _ in range(5):
        with pytest.raises(CheckoutError):
            await checkout._redeem(place(), ACTOR)
        await asyncio.sleep(0)
    assert [type(c).__name__ for c in bus.sent].count("WantShare") == 1
    bus.release.set()
    await asyncio.wait_for(bus.wanted.wait(), 5)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not checkout._wants
    with pytest.raises(CheckoutError):  # the next exhaustion's refusal says so again
        await checkout._redeem(place(), ACTOR)
    await asyncio.sleep(0)
    assert [type(c).__name__ for c in bus.sent].count("WantShare") == 2


@pytest.mark.parametrize(
    "error",
    [CapReached("LOCAL1", 10), VoucherNotFound("GLOBAL1"), AlreadyRedeemed("GLOBAL1", "org1")],
    ids=["a local voucher at its cap", "not found", "already redeemed"],
)
async def test_other_refusals_send_no_want(error: Any) -> None:
    bus = FakeBus(rejected(error), None)
    with pytest.raises(CheckoutError) as raised:
        await service(bus)._redeem(place(), ACTOR)
    assert raised.value.status == 400
    assert raised.value.message == f"invalid promo code: {error.message}"
    assert [type(c).__name__ for c in bus.sent] == ["RedeemVoucher"]


def test_wants_share_is_share_exhausted_or_a_global_share_at_the_pool_s_end() -> None:
    assert wants_share(rejected(USED_UP))
    # a global code whose share is used up while the hub's pool was last seen empty
    assert wants_share(rejected(CapReached("GLOBAL1", 100, share=30)))
    # a voucher of this Sovereign's own at its cap
    assert not wants_share(rejected(CapReached("LOCAL1", 100)))
