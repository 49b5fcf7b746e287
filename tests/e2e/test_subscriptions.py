"""An Organization's subscription, invoices and billing portal, and the admin revenue summary
(the seed's E4-E6 and E16, issue #23): a real ``voucher-ledger serve``, the real ``stripe`` SDK
against the local fake Stripe server, webhooks with real Stripe-scheme signatures.

What is proven: the seed's shapes; a completed order starts the Organization's subscription and
a later one changes it; ``invoice.payment_failed`` then ``invoice.paid`` make one invoice (a
replayed or repeated event changes nothing on the stream); the portal is a Stripe billing-portal
session for the Organization's Stripe customer; only members see an Organization's billing;
revenue counts each active subscription once (the seed's B18 double counting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import (
    Shop,
    new_customer,
    shop,
    stripe_env,
)
from tests.fakes.stripe_server import FakeStripe

OMR = 1000
SUBSCRIPTION_KEYS = {
    "id",
    "customer_id",
    "tenant_id",
    "plan_id",
    "status",
    "current_period_start",
    "current_period_end",
    "created_at",
    "updated_at",
    "amount_omr",
    "amount_baisa",
    "order_id",
}
INVOICE_KEYS = {
    "id",
    "customer_id",
    "tenant_id",
    "stripe_invoice_id",
    "amount_omr",
    "amount_baisa",
    "currency",
    "status",
    "period_start",
    "period_end",
    "pdf_url",
    "created_at",
}
REVENUE_KEYS = {
    "total_mrr",
    "total_mrr_baisa",
    "total_customers",
    "new_this_month",
    "active_subscriptions",
}


@pytest.fixture(scope="module")
async def paid(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str, fake_stripe: FakeStripe
) -> AsyncIterator[Shop]:
    async with shop(
        tmp_path_factory.mktemp("subs"), nats_url, pg_url, "subs", **stripe_env(fake_stripe)
    ) as s:
        yield s


def new_tenant() -> str:
    return new_customer("org")


async def card_checkout(
    s: Shop, fake: FakeStripe, sub: str, tenant: str, plan: str = "business"
) -> tuple[str, str]:
    """A checkout paid by card (Stripe's session completed): (order id, session id)."""
    reply = await s.checkout(sub, plan, tenant_id=tenant)
    assert reply.status == 200, reply
    assert reply.json["status"] == "pending"
    order_id = reply.json["order_id"]
    session_id = reply.json["session_url"].rsplit("/", 1)[-1]
    event = fake.event("checkout.session.completed", session_id, payment_status="paid")
    assert (await s.webhook(event)).status == 200

    async def completed() -> bool:
        return bool((await s.order(order_id))["status"] == "completed")

    await wait_until(completed, what="the card payment")
    return order_id, session_id


async def get(s: Shop, path: str, sub: str, role: str = "member") -> Any:
    reply = await s.request("GET", path, sub=sub, role=role)
    assert reply.status == 200, reply
    return reply.json


async def subscription_is(s: Shop, tenant: str, sub: str, **fields: Any) -> bool:
    reply = await s.request("GET", f"/billing/subscription/{tenant}", sub=sub, role="member")
    if reply.status != 200:
        return False
    return all(reply.json[k] == v for k, v in fields.items())


async def test_a_completed_order_starts_the_subscription_and_a_later_one_changes_it(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    owner, tenant = new_customer(), new_tenant()
    assert_json_error(
        await paid.request("GET", f"/billing/subscription/{tenant}", sub=owner, role="member"), 403
    )
    order_id, _ = await card_checkout(paid, fake_stripe, owner, tenant)
    await wait_until(lambda: subscription_is(paid, tenant, owner, order_id=order_id))
    first = await get(paid, f"/billing/subscription/{tenant}", owner)
    assert set(first) == SUBSCRIPTION_KEYS  # no stripe_subscription_id: omitted as the seed did
    assert (first["tenant_id"], first["customer_id"], first["plan_id"], first["status"]) == (
        tenant,
        owner,
        "business",
        "active",
    )
    assert (first["amount_omr"], first["amount_baisa"]) == (29, 29 * OMR)
    start = datetime.fromisoformat(first["current_period_start"])
    end = datetime.fromisoformat(first["current_period_end"])
    assert (end.year * 12 + end.month) - (start.year * 12 + start.month) == 1
    assert await get(paid, "/billing/subscription", owner) == first

    # the free plan, paid by (no) credit at once: the same subscription, changed
    reply = await paid.checkout(owner, "free", tenant_id=tenant)
    assert reply.status == 200, reply
    await wait_until(lambda: subscription_is(paid, tenant, owner, plan_id="free"))
    changed = await get(paid, f"/billing/subscription/{tenant}", owner)
    assert (changed["id"], changed["created_at"]) == (first["id"], first["created_at"])
    assert (changed["order_id"], changed["amount_baisa"]) == (reply.json["order_id"], 0)

    # a failed order (Stripe refuses the session) changes nothing
    fake_stripe.fail_next(400, "card declined")
    refused = await paid.checkout(owner, "enterprise", tenant_id=tenant)
    assert refused.status == 502, refused
    assert await get(paid, f"/billing/subscription/{tenant}", owner) == changed


async def test_invoice_webhooks_record_one_invoice_each_exactly_once(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    owner, tenant = new_customer(), new_tenant()
    _, session_id = await card_checkout(paid, fake_stripe, owner, tenant)
    await wait_until(lambda: subscription_is(paid, tenant, owner, status="active"))
    invoice_id = f"in_test_{new_customer('inv')}"

    failed = fake_stripe.invoice_event("invoice.payment_failed", session_id, invoice_id)
    assert (await paid.webhook(failed)).status == 200
    await wait_until(lambda: subscription_is(paid, tenant, owner, status="past_due"))
    [open_invoice] = await get(paid, f"/billing/invoices/{tenant}", owner)
    assert set(open_invoice) == INVOICE_KEYS
    assert (open_invoice["status"], open_invoice["stripe_invoice_id"]) == ("open", invoice_id)
    assert (open_invoice["amount_omr"], open_invoice["amount_baisa"]) == (29, 29 * OMR)

    event = fake_stripe.invoice_event("invoice.paid", session_id, invoice_id)
    assert (await paid.webhook(event)).status == 200
    await wait_until(lambda: subscription_is(paid, tenant, owner, status="active"))
    [invoice] = await get(paid, f"/billing/invoices/{tenant}", owner)
    assert (invoice["id"], invoice["created_at"]) == (
        open_invoice["id"],
        open_invoice["created_at"],
    )
    assert (invoice["status"], invoice["currency"], invoice["customer_id"]) == (
        "paid",
        "omr",
        owner,
    )
    assert invoice["pdf_url"].endswith(f"{session_id}.pdf")
    assert await get(paid, "/billing/invoices", owner) == [invoice]

    # exactly once: the same event again, the same payment in another event, a late failure
    seq = await paid.stream_seq()
    assert (await paid.webhook(event)).status == 200
    again = fake_stripe.invoice_event("invoice.paid", session_id, invoice_id)
    assert (await paid.webhook(again)).status == 200
    late = fake_stripe.invoice_event("invoice.payment_failed", session_id, invoice_id)
    assert (await paid.webhook(late)).status == 200
    assert await paid.stream_seq() == seq
    audit = await paid.db(
        "SELECT count(*) AS n FROM audit_log WHERE type = 'invoice.recorded' "
        "AND event->'event'->>'stripe_invoice_id' = $1",
        invoice_id,
    )
    assert audit[0]["n"] == 2  # the failure, then the payment

    # not ours, or in another currency: answered 200, nothing recorded
    foreign = fake_stripe.invoice_event("invoice.paid", session_id, metadata={})
    other = fake_stripe.invoice_event("invoice.paid", session_id, currency="usd")
    for ignored in (foreign, other):
        assert (await paid.webhook(ignored)).status == 200
    assert await paid.stream_seq() == seq
    # a forged signature: 400, nothing recorded
    forged = fake_stripe.invoice_event("invoice.paid", session_id)
    assert (await paid.webhook(forged, secret="whsec_forged_secret_value")).status == 400
    assert await paid.stream_seq() == seq


async def test_the_portal_opens_the_organizations_stripe_customer(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    owner, tenant = new_customer(), new_tenant()
    _, session_id = await card_checkout(paid, fake_stripe, owner, tenant)
    path = f"/billing/portal/{tenant}"
    # no invoice yet: the Stripe customer is not known
    await wait_until(lambda: subscription_is(paid, tenant, owner, status="active"))
    reply = await paid.request("POST", path, sub=owner, role="member")
    assert assert_json_error(reply, 404) == "customer not found"
    event = fake_stripe.invoice_event("invoice.paid", session_id)
    assert (await paid.webhook(event)).status == 200

    async def invoiced() -> bool:
        return len(await get(paid, f"/billing/invoices/{tenant}", owner)) == 1

    await wait_until(invoiced, what="the invoice")
    before = len(fake_stripe.portal_creates())
    reply = await paid.request("POST", path, sub=owner, role="member")
    assert reply.status == 200, reply
    assert set(reply.json) == {"portal_url"}
    assert reply.json["portal_url"].startswith("https://billing.stripe.test/p/session/")
    [create] = fake_stripe.portal_creates()[before:]
    assert create.params["customer"] == fake_stripe.sessions[session_id]["customer"]
    assert create.params["return_url"] == "https://shop.example/checkout/done?lang=en"
    assert create.headers["Idempotency-Key"]
    # Stripe refuses: 502, as the seed answered
    fake_stripe.fail_next(500, "portal down", times=3)
    failed = await paid.request("POST", path, sub=owner, role="member")
    assert assert_json_error(failed, 502) == "failed to create portal session"


async def test_only_members_see_an_organizations_billing(
    paid: Shop, fake_stripe: FakeStripe
) -> None:
    owner, stranger, tenant = new_customer(), new_customer(), new_tenant()
    _, session_id = await card_checkout(paid, fake_stripe, owner, tenant)
    assert (await paid.webhook(fake_stripe.invoice_event("invoice.paid", session_id))).status == 200
    await wait_until(lambda: subscription_is(paid, tenant, owner, status="active"))
    for method, path in (
        ("GET", f"/billing/subscription/{tenant}"),
        ("GET", f"/billing/invoices/{tenant}"),
        ("POST", f"/billing/portal/{tenant}"),
    ):
        reply = await paid.request(method, path, sub=stranger, role="member")
        assert assert_json_error(reply, 403) == "not a member of this organization", path
        assert_json_error(await paid.request(method, path, sub=None), 401)
        admin = await paid.request(method, path)  # the superadmin sees every Organization
        assert admin.status == 200, (path, admin)
    nothing = await paid.request("GET", "/billing/subscription", sub=stranger, role="member")
    assert assert_json_error(nothing, 404) == "no subscription found"
    assert await get(paid, "/billing/invoices", stranger) == []
    unknown = await paid.request("GET", "/billing/subscription/no-such-org", sub=None)
    assert_json_error(unknown, 401)
    missing = await paid.request("GET", "/billing/subscription/no-such-org")
    assert assert_json_error(missing, 404) == "no subscription found"


async def test_revenue_counts_each_active_subscription_once(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str, fake_stripe: FakeStripe
) -> None:
    """The seed joined orders to subscriptions: an Organization with two orders counted both,
    pending ones too (B18). Here: each active subscription once, at its current plan."""
    async with shop(
        tmp_path_factory.mktemp("revenue"), nats_url, pg_url, "rev", **stripe_env(fake_stripe)
    ) as s:
        empty = await get(s, "/billing/admin/revenue", "admin", "superadmin")
        assert empty == dict.fromkeys(REVENUE_KEYS, 0)
        a, b, c = new_customer(), new_customer(), new_customer()
        one, two, three = new_tenant(), new_tenant(), new_tenant()
        await card_checkout(s, fake_stripe, a, one, "business")  # 29, then changed to starter
        await card_checkout(s, fake_stripe, a, one, "starter")  # 9
        await card_checkout(s, fake_stripe, b, two, "enterprise")  # 99
        pending = await s.checkout(b, "business", tenant_id=two)  # never paid: not revenue
        assert pending.status == 200, pending
        _, session = await card_checkout(s, fake_stripe, c, three, "business")  # past due
        failed = fake_stripe.invoice_event("invoice.payment_failed", session)
        assert (await s.webhook(failed)).status == 200
        await wait_until(lambda: subscription_is(s, three, c, status="past_due"))
        await wait_until(lambda: subscription_is(s, one, a, plan_id="starter"))
        summary = await get(s, "/billing/admin/revenue", "admin", "superadmin")
        assert summary == {
            "total_mrr": 9 + 99,
            "total_mrr_baisa": (9 + 99) * OMR,
            "total_customers": 3,
            "new_this_month": 3,
            "active_subscriptions": 2,
        }
        sovereign = await get(s, "/billing/admin/revenue", "sov", "sovereign-admin")
        assert sovereign == summary
        member = await s.request("GET", "/billing/admin/revenue", sub=a, role="member")
        assert_json_error(member, 403)
        assert_json_error(await s.request("GET", "/billing/admin/revenue", sub=None), 401)
