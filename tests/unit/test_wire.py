"""The command envelope the bus writes by hand is the one the model would write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from voucher_ledger.commands.wire import CommandEnvelope, Then, encode_command
from voucher_ledger.ledger.commands import AnyCommand, Grant, GrantCredit, OpenOrder, PlaceOrder
from voucher_ledger.ledger.events import Actor, OrderLine
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher

NOW = datetime(2026, 11, 22, 1, 2, 3, 456789, tzinfo=UTC)

COMMANDS: list[AnyCommand] = [
    RedeemVoucher(code="hot-1", customer_id='we"ird\\cust 名前'),
    IssueVoucher(code="NEW", credit_baisa=5000, max_redemptions=3, description='a "b" \u2028'),
    OpenOrder(
        customer_id="c-1",
        order_id="o-1",
        tenant_id="t",
        plan_id="free",
        apps=["a"],
        addons=[],
        promo_code="HOT-1",
        lines=[OrderLine(kind="plan", id="free", name="Free", amount_baisa=0)],
        total_baisa=0,
    ),
    GrantCredit(
        customer_id="c-1",
        order_id="o-1",
        grant=Grant(redemption_id="r-1", code="HOT-1", amount_baisa=2500),
    ),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.type)
@pytest.mark.parametrize(
    "sent_at",
    [NOW, NOW.replace(microsecond=0), NOW.astimezone(timezone(timedelta(hours=4)))],
    ids=["utc", "whole-second", "offset"],
)
def test_encode_command_equals_the_model(command: AnyCommand, sent_at: datetime) -> None:
    actor = Actor(sub='sub "x"', role="customer")
    expires = sent_at + timedelta(seconds=65)
    raw = encode_command("cmd-1:a.b", actor, sent_at, expires, command)
    model = CommandEnvelope(
        command_id="cmd-1:a.b",
        actor=actor,
        sent_at=sent_at,
        expires_at=expires,
        command=command,
    )
    assert raw == model.model_dump_json().encode()
    assert CommandEnvelope.model_validate_json(raw) == model


def test_encode_command_with_a_chained_placement_equals_the_model() -> None:
    actor = Actor(sub="u-1", role="member")
    place = PlaceOrder(
        customer_id="org-1",
        order_id="o-1",
        tenant_id="org-1",
        plan_id="free",
        promo_code="HOT-1",
        lines=[OrderLine(kind="plan", id="free", name="Free \u2028", amount_baisa=0)],
        total_baisa=0,
    )
    then = Then(command_id="place-o-1", command=place)
    redeem = RedeemVoucher(code="HOT-1", customer_id="org-1", order=place.draft())
    expires = NOW + timedelta(seconds=65)
    raw = encode_command("redeem-o-1", actor, NOW, expires, redeem, then)
    model = CommandEnvelope(
        command_id="redeem-o-1",
        actor=actor,
        sent_at=NOW,
        expires_at=expires,
        command=redeem,
        then=then,
    )
    assert raw == model.model_dump_json().encode()
    assert CommandEnvelope.model_validate_json(raw) == model
    # Not part of the command: the redemption's fingerprint is the same with or without it.
    assert CommandEnvelope.model_validate_json(raw).command.fingerprint() == redeem.fingerprint()
