"""Checkout end to end: a real ``voucher-ledger serve``, the real ``stripe`` SDK talking to a fake
Stripe server, webhooks with real Stripe-scheme signatures.

Seed bugs these tests pin down: B2 (a failed checkout burned the promo slot), B3 (credit
double-spend), B6 (the Stripe path ignored credit and addons), B7 (unknown addons priced 0),
B13 (webhook idempotency record apart from its effects), B14 (payment_status ignored), B23 (no
checkout idempotency key).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import (
    SOVEREIGN,
    WEBHOOK_SECRET,
    Shop,
    expired_timestamp,
    new_code,
    new_customer,
    shop,
    start_stripe_checkout,
    stripe_env,
)
from tests.fakes.stripe_server import FakeStripe, encode_event, sign
from voucher_ledger.http.billing import CHECKOUT_PATHS

OMR = 1000


@pytest.fixture(scope="module")
async def paid(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str, fake_stripe: FakeStripe
) -> AsyncIterator[Shop]:
    """A shop with Stripe configured."""
    async with shop(
        tmp_path_factory.mktemp("paid"), nats_url, pg_url, "paid", **stripe_env(fake_stripe)
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def credit_only(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Shop]:
    """A shop without Stripe: an order that credit does not cover gets a 503."""
    async with shop(tmp_path_factory.mktemp("nostripe"), nats_url, pg_url, "nostripe") as s:
        yield s


async def fund(s: Shop, sub: str, credit_omr: int) -> None:
    """Give a customer credit the only way there is: a free-plan checkout with a promo code."""
    code = new_code("FUND")
    await s.issue(code, credit_omr)
    reply = await s.checkout(sub, plan_id="free", promo_code=code)
    assert reply.status == 200, reply
    assert reply.json["paid_by_credit"] is True
    assert reply.json["credit_balance_baisa"] >= credit_omr * OMR


# ------------------------------------------------------------------------------ routes


@pytest.mark.parametrize("path", CHECKOUT_PATHS)
async def test_every_purchase_alias_resolves_to_checkout(credit_only: Shop, path: str) -> None:
    """Regression guard (the seed's validator 404'd on the purchase aliases)."""
    anonymous = await credit_only.request("POST", path, sub=None, json_body={})
    assert_json_error(anonymous, 401)
    sub = new_customer()
    reply = await credit_only.checkout(sub, plan_id="free", path=path)
    assert reply.status == 200, reply
    body = reply.json
    assert body["status"] == "completed"
    assert body["paid_by_credit"] is True
    uuid.UUID(body["order_id"])
    order = await credit_only.order(body["order_id"])
    assert order["customer_id"] == sub
    assert order["plan_id"] == "free"


async def test_unknown_plan_or_addon_is_a_400_and_opens_no_order(credit_only: Shop) -> None:
    sub = new_customer()
    before = await credit_only.stream_seq()
    for plan, addons, fragment in (
        ("gold-plated", [], "unknown plan"),
        ("starter", ["backup", "no-such-addon"], "unknown addon"),
        ("starter", ["backup", "backup"], "listed twice"),
    ):
        reply = await credit_only.checkout(sub, plan_id=plan, addons=addons)
        assert fragment in assert_json_error(reply, 400)
    for body in (
        {"tenant_id": "t"},
        {"plan_id": "", "tenant_id": "t"},
        {"plan_id": "starter", "tenant_id": "t", "addons": "backup"},
        {"plan_id": "starter", "tenant_id": "t\x00x"},
        {"plan_id": 7, "tenant_id": "t"},
    ):
        reply = await credit_only.request(
            "POST", "/billing/checkout", sub=sub, role="member", json_body=body
        )
        assert_json_error(reply, 400)
    reply = await credit_only.checkout(sub, promo_code="not a code!")
    assert "invalid promo code" in assert_json_error(reply, 400)
    assert await credit_only.stream_seq() == before


# ------------------------------------------------------------------------------ credit only


async def test_credit_covers_the_order_no_stripe_call_and_ledger_entries(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    sub = new_customer()
    code = new_code("WELCOME")
    await paid.issue(code, 50, max_redemptions=5)
    sessions_before = len(fake_stripe.session_creates())

    reply = await paid.checkout(sub, "starter", ["backup"], promo_code=f"  {code.lower()} ")

    assert reply.status == 200, reply
    body = reply.json
    assert body["status"] == "completed"
    assert body["paid_by_credit"] is True
    assert "session_url" not in body
    assert (body["total_omr"], body["credit_applied_omr"], body["amount_due_omr"]) == (12, 12, 0)
    assert (body["credit_balance"], body["credit_balance_baisa"]) == (38, 38 * OMR)
    assert len(fake_stripe.session_creates()) == sessions_before
    balance = await paid.balance(sub)
    assert (balance["credit_omr"], balance["credit_baisa"]) == (38, 38 * OMR)
    assert balance["reserved_baisa"] == 0
    entries = [(e["kind"], e["amount_baisa"], e["reason"]) for e in balance["entries"]]
    assert entries == [
        ("captured", -12 * OMR, "order-payment"),
        ("granted", 50 * OMR, f"promo:{code}"),
    ]
    assert balance["entries"][0]["order_id"] == body["order_id"]
    voucher = await paid.voucher(code)
    assert voucher["times_redeemed"] == 1


async def test_second_checkout_with_the_same_code_is_refused_and_changes_nothing(
    paid: Shop,
) -> None:
    sub = new_customer()
    code = new_code("ONCE")
    await paid.issue(code, 20)
    first = await paid.checkout(sub, "free", promo_code=code)
    assert first.status == 200, first
    again = await paid.checkout(sub, "free", promo_code=code)
    assert "already redeemed" in assert_json_error(again, 400)
    assert (await paid.balance(sub))["credit_baisa"] == 20 * OMR
    assert (await paid.voucher(code))["times_redeemed"] == 1


async def test_a_checkout_refused_at_the_cap_gives_back_no_slot_it_never_took(
    credit_only: Shop,
) -> None:
    """The voucher refused the order's redemption: the checkout ends there (issue #19: the
    redemption comes first, so nothing reached the wallet and there is nothing to undo). One
    voucher command, no reversal, no order recorded, and the cap's count is unchanged."""
    import json

    from tests.conftest import connect

    code = new_code("FULL")
    await credit_only.issue(code, 3, max_redemptions=1)
    first = await credit_only.checkout(new_customer(), "free", promo_code=code)
    assert first.status == 200, first
    nc = await connect(credit_only.server.nats_url)
    voucher_commands: list[str] = []

    async def spy(msg: Any) -> None:
        voucher_commands.append(json.loads(msg.data)["command"]["type"])

    try:
        await nc.subscribe(f"{credit_only.server.prefix}.commands.*.voucher.{code}", cb=spy)
        await nc.flush()
        sub = new_customer()
        refused = await credit_only.checkout(sub, "free", promo_code=code)
        assert "limit" in assert_json_error(refused, 400)
        await nc.flush()
    finally:
        await nc.close()
    assert voucher_commands == ["redeem_voucher"]
    assert [o for o in await credit_only.orders() if o["customer_id"] == sub] == []
    rows = await credit_only.db("SELECT type FROM audit_log WHERE aggregate_id = $1", sub)
    assert rows == []  # nothing written for the account
    assert (await credit_only.voucher(code))["times_redeemed"] == 1
    assert (await credit_only.balance(sub))["credit_baisa"] == 0


async def test_a_free_order_with_a_code_is_two_decisions(credit_only: Shop) -> None:
    """Issue #19: the redemption (carrying the priced order), then one wallet decision that
    places the order, grants the credit and completes it, as one event (one plain publish)."""
    sub = new_customer()
    code = new_code("FREE")
    await credit_only.issue(code, 4)
    reply = await credit_only.checkout(sub, "free", promo_code=code)
    assert reply.status == 200, reply
    order_id = reply.json["order_id"]
    rows = await credit_only.db(
        "SELECT type, command_id, event FROM audit_log WHERE aggregate = 'wallet' "
        "AND aggregate_id = $1 ORDER BY seq",
        sub,
    )
    assert [(r["type"], r["command_id"]) for r in rows] == [("order.placed", f"place-{order_id}")]
    placed = json.loads(rows[0]["event"])["event"]
    assert placed["grant"]["amount_baisa"] == 4 * OMR
    assert (placed["credit_applied_baisa"], placed["amount_due_baisa"]) == (0, 0)
    [redeemed] = await credit_only.db(
        "SELECT command_id, event FROM audit_log WHERE aggregate_id = $1 "
        "AND type = 'voucher.redeemed'",
        code,
    )
    assert redeemed["command_id"] == f"redeem-{order_id}"
    order = json.loads(redeemed["event"])["event"]["order"]
    assert (order["order_id"], order["plan_id"], order["total_baisa"]) == (order_id, "free", 0)
    assert reply.json["credit_balance_baisa"] == 4 * OMR
    assert (await credit_only.balance(sub))["credit_baisa"] == 4 * OMR


# ------------------------------------------------------------------------------ Stripe path


async def test_stripe_session_is_for_exactly_the_amount_due_with_addons_and_metadata(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    sub = new_customer()
    code = new_code("PART")
    await paid.issue(code, 5)
    before = len(fake_stripe.session_creates())

    reply = await paid.checkout(
        sub, "business", ["priority-support"], promo_code=code, tenant_id="acme"
    )

    assert reply.status == 200, reply
    body = reply.json
    assert (body["status"], body["state"]) == ("pending", "awaiting_payment")
    assert body["paid_by_credit"] is False
    assert body["session_url"].startswith("https://checkout.stripe.test/")
    assert (body["total_omr"], body["credit_applied_omr"], body["amount_due_omr"]) == (39, 5, 34)
    assert body["amount_due_baisa"] == 34 * OMR
    assert body["credit_balance_baisa"] == 0
    creates = fake_stripe.session_creates()[before:]
    assert len(creates) == 1
    sent = creates[0]
    order_id = body["order_id"]
    assert sent.headers["Idempotency-Key"] == order_id
    assert sent.headers["Stripe-Version"] == "2026-10-28.endive"
    params: dict[str, Any] = sent.params
    assert params["mode"] == "payment"
    assert params["metadata"] == {"order_id": order_id, "tenant_id": "acme", "sovereign": SOVEREIGN}
    assert params["payment_intent_data"]["metadata"] == params["metadata"]
    assert params["client_reference_id"] == sub
    assert params["success_url"] == (
        f"https://shop.example/checkout/done?lang=en&order_id={order_id}"
    )
    items = [
        (
            i["price_data"]["currency"],
            int(i["price_data"]["unit_amount"]),
            i["price_data"]["product_data"]["name"],
            int(i["quantity"]),
        )
        for i in params["line_items"]
    ]
    assert items == [
        ("omr", 24 * OMR, "Business (credit applied: 5 OMR)", 1),
        ("omr", 10 * OMR, "Priority support", 1),
    ]
    assert sum(amount * qty for _, amount, _, qty in items) == body["amount_due_baisa"]
    balance = await paid.balance(sub)
    assert (balance["credit_baisa"], balance["reserved_baisa"]) == (0, 5 * OMR)
    order = await paid.order(order_id)
    assert (order["status"], order["state"]) == ("pending", "awaiting_payment")
    session_id = body["session_url"].rsplit("/", 1)[-1]
    assert order["stripe_session_id"] == session_id
    assert fake_stripe.sessions[session_id]["amount_total"] == 34 * OMR


async def test_an_order_waiting_for_stripe_reads_pending_and_either_name_filters_it(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    """The seed's Orders page filters unpaid orders with ?status=pending; the ledger's own name
    for the state (awaiting_payment, documented before) keeps filtering the same orders."""
    sub, _, order_id, _ = await start_stripe_checkout(paid, fake_stripe, 3)
    done = await paid.checkout(sub, plan_id="free")
    assert done.status == 200, done
    pending = {o["id"]: o for o in await paid.orders(status="pending") if o["customer_id"] == sub}
    waiting = [o["id"] for o in await paid.orders(status="awaiting_payment")]
    assert list(pending) == [order_id]
    assert order_id in waiting
    assert {o["id"] for o in await paid.orders(status="pending")} == set(waiting)
    assert (pending[order_id]["status"], pending[order_id]["state"]) == (
        "pending",
        "awaiting_payment",
    )
    completed = [o for o in await paid.orders(status="completed") if o["customer_id"] == sub]
    assert [(o["id"], o["status"], o["state"]) for o in completed] == [
        (done.json["order_id"], "completed", "completed")
    ]
    assert_json_error(await paid.request("GET", "/billing/admin/orders?status=unpaid"), 400)


async def test_paid_webhook_captures_the_credit_and_a_replay_changes_nothing(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    sub, _, order_id, session_id = await start_stripe_checkout(paid, fake_stripe, 4)
    event = fake_stripe.event(
        "checkout.session.completed", session_id, payment_status="paid", status="complete"
    )

    first = await paid.webhook(event)

    assert first.status == 200, first
    await wait_until(
        lambda: _status_is(paid, order_id, "completed"), what="order completed by the webhook"
    )
    order = await paid.order(order_id)
    assert order["amount_paid_baisa"] == 25 * OMR
    assert order["credit_applied_baisa"] == 4 * OMR
    balance = await paid.balance(sub)
    assert (balance["credit_baisa"], balance["reserved_baisa"], balance["balance_baisa"]) == (
        0,
        0,
        0,
    )
    assert [e["kind"] for e in balance["entries"]] == ["captured", "granted"]
    seq = await paid.stream_seq()
    for _ in range(3):
        replay = await paid.webhook(event)
        assert replay.status == 200, replay
    assert await paid.stream_seq() == seq
    assert (await paid.order(order_id))["status"] == "completed"


async def _status_is(s: Shop, order_id: str, status: str) -> bool:
    return bool((await s.order(order_id))["status"] == status)


async def test_unpaid_completion_does_not_complete_the_order(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    """B14: an async payment method completes the session before the money arrives."""
    _, _, order_id, session_id = await start_stripe_checkout(paid, fake_stripe, 2)
    seq = await paid.stream_seq()
    event = fake_stripe.event(
        "checkout.session.completed", session_id, payment_status="unpaid", status="complete"
    )
    assert (await paid.webhook(event)).status == 200
    assert await paid.stream_seq() == seq
    order = await paid.order(order_id)
    assert (order["status"], order["state"]) == ("pending", "awaiting_payment")
    later = fake_stripe.event(
        "checkout.session.async_payment_succeeded", session_id, payment_status="paid"
    )
    assert (await paid.webhook(later)).status == 200
    await wait_until(lambda: _status_is(paid, order_id, "completed"), what="async payment")


async def test_expired_session_releases_the_credit_and_keeps_the_redemption(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    sub, code, order_id, session_id = await start_stripe_checkout(paid, fake_stripe, 7)
    assert (await paid.balance(sub))["reserved_baisa"] == 7 * OMR

    reply = await paid.webhook(fake_stripe.event("checkout.session.expired", session_id))

    assert reply.status == 200, reply
    await wait_until(lambda: _status_is(paid, order_id, "abandoned"), what="abandoned")
    balance = await paid.balance(sub)
    assert (balance["credit_baisa"], balance["reserved_baisa"]) == (7 * OMR, 0)
    assert (await paid.voucher(code))["times_redeemed"] == 1
    # A payment that still arrives for the abandoned order is recorded, never dropped.
    late = fake_stripe.event("checkout.session.completed", session_id, payment_status="paid")
    assert (await paid.webhook(late)).status == 200
    await wait_until(lambda: _status_is(paid, order_id, "refund_due"), what="refund due")
    assert (await paid.balance(sub))["credit_baisa"] == 7 * OMR


async def test_forged_expired_or_missing_signatures_are_400_and_change_nothing(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    _, _, order_id, session_id = await start_stripe_checkout(paid, fake_stripe, 3)
    event = fake_stripe.event("checkout.session.completed", session_id, payment_status="paid")
    seq = await paid.stream_seq()
    attempts = [
        await paid.webhook(event, secret="whsec_attacker_" + "a" * 30),
        await paid.webhook(event, timestamp=expired_timestamp()),
        await paid.webhook(event, signature=""),
        await paid.webhook(event, signature="t=1,v1=deadbeef"),
        await paid.webhook(event, signature="garbage"),
    ]
    # The body changed after signing: the signature no longer matches.
    signed = await paid.webhook(event)
    assert signed.status == 200  # the genuine one still works afterwards ...
    for reply in attempts:
        assert assert_json_error(reply, 400) == "invalid webhook signature"
    tampered = dict(event, id="evt_" + uuid.uuid4().hex)
    original = encode_event(tampered)
    header = sign(original, WEBHOOK_SECRET)
    edited = original.replace(b'"paid"', b'"free"')
    assert_json_error(await paid.webhook(tampered, payload=edited, signature=header), 400)
    await wait_until(lambda: _status_is(paid, order_id, "completed"), what="genuine event")
    assert await paid.stream_seq() > seq  # ... and only it changed something


async def test_webhook_accepts_a_large_event_and_ignores_other_types(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    _, _, order_id, session_id = await start_stripe_checkout(paid, fake_stripe, 1)
    seq = await paid.stream_seq()
    bulky = fake_stripe.event("invoice.paid", session_id, padding="x" * 600_000)
    reply = await paid.webhook(bulky)
    assert reply.status == 200, reply  # the seed cut bodies at 64 KiB (B21)
    assert await paid.stream_seq() == seq
    too_big = fake_stripe.event("invoice.paid", session_id, padding="x" * 1_100_000)
    assert_json_error(await paid.webhook(too_big), 413)
    order = await paid.order(order_id)
    assert (order["status"], order["state"]) == ("pending", "awaiting_payment")


async def test_same_idempotency_key_returns_the_same_order_and_one_session(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    sub = new_customer()
    key = f"cart-{uuid.uuid4().hex}"
    before = len(fake_stripe.session_creates())
    replies = await asyncio.gather(
        *(paid.checkout(sub, "starter", ["backup"], key=key) for _ in range(5))
    )
    assert {r.status for r in replies} == {200}, replies
    assert len({r.json["order_id"] for r in replies}) == 1
    assert len({r.json["session_url"] for r in replies}) == 1
    again = await paid.checkout(sub, "starter", ["backup"], key=key)
    assert again.json["order_id"] == replies[0].json["order_id"]
    sessions = {r.params["metadata"]["order_id"] for r in fake_stripe.session_creates()[before:]}
    assert sessions == {replies[0].json["order_id"]}
    assert len(fake_stripe.sessions) >= 1
    other = await paid.checkout(sub, "enterprise", key=key)
    assert "Idempotency-Key" in assert_json_error(other, 409)
    orders = [o for o in await paid.orders() if o["customer_id"] == sub]
    assert len(orders) == 1


async def test_stripe_rejection_is_a_502_and_gives_slot_and_credit_back(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    sub = new_customer()
    code = new_code("REJ")
    await paid.issue(code, 6, max_redemptions=1)
    fake_stripe.fail_next(400, "No such price")
    reply = await paid.checkout(sub, "business", promo_code=code)
    assert "payment processor rejected" in assert_json_error(reply, 502)
    assert (await paid.voucher(code))["times_redeemed"] == 0
    balance = await paid.balance(sub)
    assert (balance["credit_baisa"], balance["reserved_baisa"], balance["balance_baisa"]) == (
        0,
        0,
        0,
    )
    failed = [o for o in await paid.orders(status="failed") if o["customer_id"] == sub]
    assert len(failed) == 1
    assert failed[0]["failure_reason"] == "payment_error"
    # The slot is free again: the single slot can still be used.
    other = await paid.checkout(new_customer(), "free", promo_code=code)
    assert other.status == 200, other


# ------------------------------------------------------------------------------ no Stripe


async def test_without_stripe_an_amount_due_is_503_and_leaves_nothing_redeemed(
    credit_only: Shop,
) -> None:
    sub = new_customer()
    code = new_code("NOSTRIPE")
    await credit_only.issue(code, 5, max_redemptions=1)
    reply = await credit_only.checkout(sub, "business", promo_code=code)
    message = assert_json_error(reply, 503)
    assert "payment processor is not configured" in message
    assert (await credit_only.voucher(code))["times_redeemed"] == 0
    balance = await credit_only.balance(sub)
    assert (balance["credit_baisa"], balance["reserved_baisa"], balance["entries"]) == (0, 0, [])
    # The marketplace retries with the same code (B2): it is not "already redeemed".
    retry = await credit_only.checkout(sub, "free", promo_code=code)
    assert retry.status == 200, retry
    assert retry.json["credit_balance_baisa"] == 5 * OMR


async def test_fifty_concurrent_checkouts_on_credit_for_ten_exactly_ten_succeed(
    credit_only: Shop,
) -> None:
    """B3: the balance is decided by the wallet aggregate, one command after another."""
    sub = new_customer("storm")
    await fund(credit_only, sub, 10 * 9)  # ten starter plans (9 OMR each)
    replies = await asyncio.gather(*(credit_only.checkout(sub, "starter") for _ in range(50)))
    ok = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert len(ok) == 10, [r for r in replies if r.status not in (200, 503)]
    assert all(r.json["paid_by_credit"] for r in ok)
    assert {r.status for r in refused} == {503}
    balance = await credit_only.balance(sub)
    assert (balance["credit_baisa"], balance["reserved_baisa"], balance["balance_baisa"]) == (
        0,
        0,
        0,
    )
    rows = await credit_only.db(
        "SELECT balance_after_baisa, reserved_after_baisa FROM credit_entries "
        "WHERE customer_id = $1",
        sub,
    )
    assert len(rows) == 1 + 10 * 2  # the grant, then a reservation and a capture per order
    assert all(r["balance_after_baisa"] - r["reserved_after_baisa"] >= 0 for r in rows)
    assert min(r["balance_after_baisa"] for r in rows) == 0
    # The 40 refused were refused by the wallet's decision to place them: nothing recorded.
    orders = [o for o in await credit_only.orders() if o["customer_id"] == sub]
    statuses = sorted(o["status"] for o in orders if o["plan_id"] == "starter")
    assert statuses == ["completed"] * 10


async def test_orders_and_credit_movements_are_events_in_the_audit_trail(paid: Shop) -> None:
    sub = new_customer()
    code = new_code("AUDIT")
    await paid.issue(code, 15)
    reply = await paid.checkout(sub, "starter", promo_code=code)
    assert reply.status == 200, reply
    rows = await paid.db(
        "SELECT type, aggregate_id, actor_sub, command_id, event FROM audit_log "
        "WHERE aggregate = 'wallet' AND aggregate_id = $1 ORDER BY seq",
        sub,
    )
    assert [r["type"] for r in rows] == ["order.placed"]  # opened, granted, reserved, captured
    placed = json.loads(rows[0]["event"])["event"]
    assert (placed["credit_applied_baisa"], placed["amount_due_baisa"]) == (9 * OMR, 0)
    # the balance's movements: one entry per part of it
    entries = await paid.db(
        "SELECT kind FROM credit_entries WHERE customer_id = $1 ORDER BY seq, kind", sub
    )
    assert [e["kind"] for e in entries] == ["captured", "granted", "reserved"]
    order_id = reply.json["order_id"]
    assert {r["command_id"] for r in rows} == {f"place-{order_id}"}
    assert {r["actor_sub"] for r in rows} == {sub}
    voucher_rows = await paid.db(
        "SELECT type, command_id FROM audit_log WHERE aggregate = 'voucher' "
        "AND aggregate_id = $1 AND type = 'voucher.redeemed'",
        code,
    )
    assert [r["command_id"] for r in voucher_rows] == [f"redeem-{order_id}"]


# ------------------------------------------------------------------ strict body, paged orders


async def test_a_checkout_body_with_a_field_the_marketplace_never_sends_is_a_400_naming_it(
    credit_only: Shop,
) -> None:
    """The seed's marketplace sends plan_id, tenant_id, apps, addons and promo_code: a typo
    ("promocode") would otherwise be a checkout without the voucher."""
    sub = new_customer()
    code = new_code("STRICT")
    await credit_only.issue(code, 50)
    before = await credit_only.stream_seq()
    for path in CHECKOUT_PATHS:
        reply = await credit_only.request(
            "POST",
            path,
            sub=sub,
            role="member",
            json_body={"plan_id": "starter", "tenant_id": "t", "promocode": code},
        )
        assert "promocode" in assert_json_error(reply, 400)
        assert set(reply.json["fields"]) == {"promocode"}
    assert await credit_only.stream_seq() == before
    exact = await credit_only.checkout(sub, "starter", addons=["backup"], promo_code=code)
    assert exact.status == 200, exact  # all five fields the marketplace sends
    assert exact.json["paid_by_credit"] is True


async def test_the_order_list_says_how_many_match_and_links_the_next_page(
    credit_only: Shop,
) -> None:
    for _ in range(3):
        reply = await credit_only.checkout(new_customer(), plan_id="free")
        assert reply.status == 200, reply
    total = len(await credit_only.orders(status="completed"))
    assert total >= 3
    first = await credit_only.request("GET", "/billing/admin/orders?status=completed&limit=2")
    assert first.status == 200, first
    assert len(first.json) == 2
    assert first.headers["X-Total-Count"] == str(total)
    assert first.headers["Link"] == '<orders?status=completed&limit=2&offset=2>; rel="next"'
    last = await credit_only.request(
        "GET", f"/billing/admin/orders?status=completed&limit=2&offset={total - 1}"
    )
    assert len(last.json) == 1
    assert last.headers["X-Total-Count"] == str(total)
    assert "Link" not in last.headers


async def test_the_later_marketplaces_topology_field_is_accepted_when_single_region(
    credit_only: Shop,
) -> None:
    """The seed's later marketplace adds ``topology`` (spec §9.1). Blank and single-region are
    what this service sells: accepted. Another topology is refused, changing nothing, rather
    than sold at the single-region price."""
    code = new_code("TOPO")
    await credit_only.issue(code, 50)
    body: dict[str, object] = {"plan_id": "starter", "tenant_id": "t", "promo_code": code}
    before = await credit_only.stream_seq()
    refused = await credit_only.request(
        "POST",
        CHECKOUT_PATHS[0],
        sub=new_customer(),
        role="member",
        json_body={**body, "topology": "active-hot-standby"},
    )
    assert set(assert_json_error(refused, 400) and refused.json["fields"]) == {"topology"}
    assert await credit_only.stream_seq() == before
    for topology in ("", "single-region"):
        sub = new_customer()  # each its own Organization: a code redeems once per Organization
        reply = await credit_only.request(
            "POST",
            CHECKOUT_PATHS[0],
            sub=sub,
            role="member",
            json_body={**body, "tenant_id": sub, "topology": topology},
        )
        assert reply.status == 200, reply
        assert reply.json["paid_by_credit"] is True
