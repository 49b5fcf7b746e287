"""Issue #21: discount vouchers over HTTP on a real ``voucher-ledger serve`` with the fake
Stripe (the real SDK, real signatures): a discount applies before credit, to the lines it names,
for its duration; Stripe is asked for exactly the discounted prices; at most one discount per
order (the one that saves the most); an order with nothing left to pay completes without Stripe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop, stripe_env
from tests.e2e.faults import verify_cli, wait_read_models
from tests.e2e.helpers import clean_env
from tests.fakes.stripe_server import FakeStripe

OMR = 1000
ISSUE = "/billing/vouchers/issue"


@pytest.fixture(scope="module")
async def paid(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str, fake_stripe: FakeStripe
) -> AsyncIterator[Shop]:
    async with shop(
        tmp_path_factory.mktemp("disc"), nats_url, pg_url, "disc", **stripe_env(fake_stripe)
    ) as s:
        yield s


async def issue_discount(s: Shop, code: str, **terms: Any) -> dict[str, Any]:
    reply = await s.request("POST", ISSUE, json_body={"code": code, **terms})
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json
    return body


def charged(fake: FakeStripe, before: int) -> list[tuple[str, int]]:
    """The line items (name, unit amount) of the one session created since ``before``."""
    [created] = fake.session_creates()[before:]
    return [
        (i["price_data"]["product_data"]["name"], int(i["price_data"]["unit_amount"]))
        for i in created.params["line_items"]
    ]


async def test_twenty_percent_off_add_ons_for_five_seconds(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    code = new_code("ADDON20")
    made = await issue_discount(
        paid, code, kind="percent_off", percent_off=20, applies_to=["addons"], duration="PT5S"
    )
    assert (made["kind"], made["percent_off"], made["credit_omr"]) == ("percent_off", 20, 0)
    assert made["summary"] == "20% off add-ons for 5 seconds"
    preview = await paid.request(
        "POST", "/billing/vouchers/redeem-preview", sub=None, json_body={"code": code}
    )
    assert preview.status == 200, preview
    assert (preview.json["kind"], preview.json["summary"]) == ("percent_off", made["summary"])

    org = new_customer("disc")
    addons = ["priority-support", "backup"]  # 10 + 3 OMR; the business plan 29 OMR
    # The redeeming order: 20 % off the add-ons only (2.6 OMR), the plan at full price.
    before = len(fake_stripe.session_creates())
    started = time.monotonic()
    first = await paid.checkout(org, "business", addons, promo_code=code)
    assert first.status == 200, first
    assert (first.json["total_baisa"], first.json["discount_baisa"]) == (42 * OMR, 2600)
    assert first.json["amount_due_baisa"] == 42 * OMR - 2600
    lines = charged(fake_stripe, before)
    assert lines == [
        ("Business", 29 * OMR),
        ("Priority support (discount: 2 OMR)", 8 * OMR),
        ("Daily backups (discount: 0.6 OMR)", 2400),
    ]
    assert sum(amount for _, amount in lines) == first.json["amount_due_baisa"]
    session_id = first.json["session_url"].rsplit("/", 1)[-1]
    assert fake_stripe.sessions[session_id]["amount_total"] == 42 * OMR - 2600

    # A second order inside the window, without a code: the running discount applies.
    before = len(fake_stripe.session_creates())
    second = await paid.checkout(org, "starter", ["backup"])
    assert second.status == 200, second
    assert second.json["discount_baisa"] == 600  # 20 % of the 3 OMR add-on, not the plan
    assert charged(fake_stripe, before) == [
        ("Starter", 9 * OMR),
        ("Daily backups (discount: 0.6 OMR)", 2400),
    ]
    # Another Organization gets nothing from it.
    other = await paid.checkout(new_customer("disc"), "starter", ["backup"])
    assert other.json["discount_baisa"] == 0

    # After the window: full price.
    await asyncio.sleep(max(0.0, 5.5 - (time.monotonic() - started)))
    before = len(fake_stripe.session_creates())
    third = await paid.checkout(org, "starter", ["backup"])
    assert third.status == 200, third
    assert (third.json["discount_baisa"], third.json["amount_due_baisa"]) == (0, 12 * OMR)
    assert charged(fake_stripe, before) == [("Starter", 9 * OMR), ("Daily backups", 3 * OMR)]

    orders = {o["id"]: o for o in await paid.orders() if o["customer_id"] == org}
    assert orders[first.json["order_id"]]["discount_baisa"] == 2600
    assert orders[first.json["order_id"]]["discount_code"] == code
    assert orders[second.json["order_id"]]["discount_code"] == code
    assert orders[third.json["order_id"]]["discount_baisa"] == 0


async def test_a_full_discount_completes_without_stripe_and_credit_applies_after_it(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    org = new_customer("disc")
    full = new_code("FREE100")
    await issue_discount(paid, full, kind="percent_off", percent_off=100)
    before = len(fake_stripe.session_creates())
    reply = await paid.checkout(org, "business", ["backup"], promo_code=full)
    assert reply.status == 200, reply
    assert (reply.json["status"], reply.json["discount_baisa"]) == ("completed", 32 * OMR)
    assert (reply.json["amount_due_baisa"], reply.json["credit_applied_baisa"]) == (0, 0)
    assert len(fake_stripe.session_creates()) == before

    # An amount off, then credit: 5 OMR off, 20 OMR of credit covers the remaining 24.
    org2 = new_customer("disc")
    fund = new_code("FUND")
    await paid.issue(fund, 20)
    funded = await paid.checkout(org2, "free", promo_code=fund)
    assert funded.status == 200, funded
    off = new_code("FIVEOFF")
    made = await issue_discount(paid, off, kind="amount_off", amount_off_omr=5)
    assert made["summary"] == "5 OMR off (this order)"
    before = len(fake_stripe.session_creates())
    reply = await paid.checkout(org2, "business", promo_code=off)
    assert reply.status == 200, reply
    assert (reply.json["discount_baisa"], reply.json["credit_applied_baisa"]) == (5 * OMR, 20 * OMR)
    assert reply.json["amount_due_baisa"] == 4 * OMR
    assert charged(fake_stripe, before) == [
        ("Business (discount: 5 OMR) (credit applied: 20 OMR)", 4 * OMR)
    ]


async def test_the_best_discount_applies_and_only_one(paid: Shop, fake_stripe: FakeStripe) -> None:
    org = new_customer("disc")
    running = new_code("RUN10")
    await issue_discount(paid, running, kind="percent_off", percent_off=10, duration="forever")
    first = await paid.checkout(org, "starter", promo_code=running)
    assert first.json["discount_baisa"] == 900
    # A 50 %-off-add-ons code saves less on this order (1.5 OMR of a 3 OMR add-on) than the
    # running 10 % off everything (2.9 + 0.3 = ... 10 % of 32 OMR = 3.2 OMR): the running wins.
    addons50 = new_code("ADD50")
    await issue_discount(paid, addons50, kind="percent_off", percent_off=50, applies_to=["addons"])
    reply = await paid.checkout(org, "business", ["backup"], promo_code=addons50)
    assert reply.status == 200, reply
    assert reply.json["discount_baisa"] == 3200
    [order] = [o for o in await paid.orders() if o["id"] == reply.json["order_id"]]
    assert order["discount_code"] == running

    await wait_read_models(paid.server.database_url, await paid.stream_seq())
    env = clean_env(
        NATS_URL=paid.server.nats_url,
        DATABASE_URL=paid.server.database_url,
        SUBJECT_PREFIX=paid.server.prefix,
    )
    await verify_cli(env)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "percent_off"}, "percent_off"),
        ({"kind": "percent_off", "percent_off": 0}, "percent_off"),
        ({"kind": "percent_off", "percent_off": 101}, "percent_off"),
        ({"kind": "percent_off", "percent_off": 10, "amount_off_omr": 2}, "amount_off"),
        ({"kind": "amount_off", "amount_off_omr": 0}, "amount_off_omr"),
        ({"kind": "percent_off", "percent_off": 10, "duration": "P3X"}, "duration"),
        ({"kind": "percent_off", "percent_off": 10, "applies_to": ["plans", "plans"]}, "applies"),
        ({"kind": "percent_off", "percent_off": 10, "applies_to": ["shoes"]}, "applies_to"),
        ({"kind": "percent_off", "percent_off": 10, "credit_omr": 5}, "credit_omr"),
        ({"kind": "credit", "credit_omr": 5, "percent_off": 10}, "percent_off"),
        ({"kind": "credit"}, "credit_omr"),
        ({"kind": "bogus", "credit_omr": 5}, "kind"),
    ],
)
async def test_a_bad_discount_is_a_400_naming_the_field_and_writes_nothing(
    paid: Shop, body: dict[str, Any], field: str
) -> None:
    code = new_code("BAD")
    reply = await paid.request("POST", ISSUE, json_body={"code": code, **body})
    assert field in assert_json_error(reply, 400)
    assert (await paid.request("GET", f"/billing/vouchers/{code}")).status == 404


async def test_a_campaign_of_discount_codes(paid: Shop, fake_stripe: FakeStripe) -> None:
    """Campaigns take every kind: each code of a 50 %-off-plans campaign discounts the order
    that redeems it, the campaign's cap holds across its codes; a budget is a credit
    campaign's (a discount's cost depends on orders to come): refused with a 400."""
    refused = await paid.request(
        "POST",
        "/billing/campaigns",
        json_body={"name": "half", "kind": "percent_off", "percent_off": 50, "budget_omr": 9},
    )
    assert "budget_omr" in assert_json_error(refused, 400)
    made = await paid.request(
        "POST",
        "/billing/campaigns",
        json_body={
            "name": "half off plans",
            "kind": "percent_off",
            "percent_off": 50,
            "applies_to": ["plans"],
            "max_redemptions": 1,
        },
    )
    assert made.status == 200, made
    assert (made.json["kind"], made.json["summary"]) == (
        "percent_off",
        "50% off plans (this order)",
    )
    cid = made.json["campaign_id"]
    codes = await paid.request("POST", f"/billing/campaigns/{cid}/codes", json_body={"count": 2})
    one, two = codes.json["codes"]
    preview = await paid.request(
        "POST", "/billing/vouchers/redeem-preview", sub=None, json_body={"code": one}
    )
    assert preview.json["summary"] == "50% off plans (this order)"
    before = len(fake_stripe.session_creates())
    reply = await paid.checkout(new_customer("disc"), "business", ["backup"], promo_code=one)
    assert reply.status == 200, reply
    assert (reply.json["discount_baisa"], reply.json["amount_due_baisa"]) == (14500, 17500)
    assert charged(fake_stripe, before) == [
        ("Business (discount: 14.5 OMR)", 14500),
        ("Daily backups", 3 * OMR),
    ]
    over = await paid.checkout(new_customer("disc"), "business", promo_code=two)
    assert "limit" in assert_json_error(over, 400)
