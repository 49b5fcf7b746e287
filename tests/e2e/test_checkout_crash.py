"""Crash safety of checkout: the service dies at a chosen point of the saga (a failpoint exits
the process as a SIGKILL would), is restarted, and its recovery loop finishes or compensates
the half-way checkout: no cap slot leaked, no credit lost or doubled."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import fresh_database, wait_until
from tests.e2e.api_helpers import _delete_streams
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop_on, stripe_env
from tests.fakes.stripe_server import FakeStripe
from voucher_ledger.billing.failpoints import EXIT_CODE

OMR = 1000
RECOVERY = {"CHECKOUT_RECOVERY_AFTER": "3", "CHECKOUT_RECOVERY_INTERVAL": "0.3"}


async def crash_during_checkout(s: Shop, sub: str, **checkout: object) -> None:
    with pytest.raises(aiohttp.ClientError):
        await s.checkout(sub, **checkout)  # type: ignore[arg-type]
    code = await s.server.process.wait(30)
    assert code == EXIT_CODE, s.server.process.output()[-3000:]


async def crash_at(
    failpoint: str,
    tmp_path: Path,
    nats_url: str,
    db: str,
    prefix: str,
    *,
    code: str,
    credit_omr: int,
    sub: str,
    plan_id: str,
) -> None:
    """Issue a one-slot code, then check out with it on a service that dies at ``failpoint``."""
    async with shop_on(
        tmp_path, nats_url, db, prefix, None, VL_FAILPOINTS=failpoint, **RECOVERY
    ) as first:
        await first.issue(code, credit_omr, max_redemptions=1)
        await crash_during_checkout(first, sub, plan_id=plan_id, promo_code=code)


def order_failed_and_slot_free(shop: Shop, sub: str, code: str) -> Callable[[], Awaitable[bool]]:
    """True once ``sub``'s one order is failed and the code's slot is given back."""

    async def check() -> bool:
        orders = [o for o in await shop.orders() if o["customer_id"] == sub]
        voucher = await shop.voucher(code)
        failed = len(orders) == 1 and orders[0]["status"] == "failed"
        return failed and voucher["times_redeemed"] == 0

    return check


async def test_crash_between_redemption_and_settlement_gives_the_slot_back(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    code = new_code("CRASH")
    sub = new_customer()
    async with fresh_database(pg_url) as db:
        try:
            await crash_at(
                "checkout.after_redeem",
                tmp_path,
                nats_url,
                db,
                prefix,
                code=code,
                credit_omr=20,
                sub=sub,
                plan_id="starter",
            )
            async with shop_on(tmp_path, nats_url, db, prefix, 0, **RECOVERY) as second:
                # The redemption landed before the crash: the slot is taken, for now.
                await wait_until(
                    order_failed_and_slot_free(second, sub, code),
                    timeout=40,
                    what="recovery compensates the order",
                )
                [order] = [o for o in await second.orders() if o["customer_id"] == sub]
                assert order["failure_reason"] == "interrupted"
                balance = await second.balance(sub)
                assert (balance["credit_baisa"], balance["reserved_baisa"]) == (0, 0)
                assert balance["entries"] == []
                redemptions = await second.request("GET", f"/billing/vouchers/{code}/redemptions")
                [redemption] = redemptions.json["redemptions"]
                assert redemption["customer_id"] == sub
                assert redemption["reversed_at"] is not None
                # The one slot is free: the same customer (retrying) gets it, and its credit.
                retry = await second.checkout(sub, plan_id="starter", promo_code=code)
                assert retry.status == 200, retry
                assert retry.json["paid_by_credit"] is True
                assert retry.json["credit_balance_baisa"] == 11 * OMR
                assert (await second.voucher(code))["times_redeemed"] == 1
        finally:
            await _delete_streams(nats_url, prefix)


async def test_crash_after_settlement_completes_the_stripe_checkout_on_restart(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    fake = FakeStripe()
    await fake.start()
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    code = new_code("SETTLED")
    sub = new_customer()
    env = {**stripe_env(fake), **RECOVERY}
    try:
        async with fresh_database(pg_url) as db:
            try:
                async with shop_on(
                    tmp_path,
                    nats_url,
                    db,
                    prefix,
                    None,
                    VL_FAILPOINTS="checkout.after_settle",
                    **env,
                ) as first:
                    await first.issue(code, 4, max_redemptions=1)
                    await crash_during_checkout(first, sub, plan_id="starter", promo_code=code)
                assert fake.session_creates() == []

                async with shop_on(tmp_path, nats_url, db, prefix, 0, **env) as second:

                    async def session_attached() -> bool:
                        orders = [o for o in await second.orders() if o["customer_id"] == sub]
                        return len(orders) == 1 and orders[0]["stripe_session_id"] is not None

                    await wait_until(session_attached, timeout=40, what="recovery asks Stripe")
                    [order] = [o for o in await second.orders() if o["customer_id"] == sub]
                    assert (order["status"], order["state"]) == ("pending", "awaiting_payment")
                    assert (order["credit_applied_baisa"], order["amount_due_baisa"]) == (
                        4 * OMR,
                        5 * OMR,
                    )
                    [created] = fake.session_creates()
                    assert created.headers["Idempotency-Key"] == order["id"]
                    balance = await second.balance(sub)
                    assert (balance["credit_baisa"], balance["reserved_baisa"]) == (0, 4 * OMR)
                    assert (await second.voucher(code))["times_redeemed"] == 1
                    # The customer pays: captured once, nothing doubled.
                    paid = fake.event(
                        "checkout.session.completed",
                        order["stripe_session_id"],
                        payment_status="paid",
                    )
                    assert (await second.webhook(paid)).status == 200

                    async def completed() -> bool:
                        return bool((await second.order(order["id"]))["status"] == "completed")

                    await wait_until(completed, what="paid order completed")
                    balance = await second.balance(sub)
                    assert (balance["balance_baisa"], balance["reserved_baisa"]) == (0, 0)
                    kinds = sorted(e["kind"] for e in balance["entries"])
                    assert kinds == ["captured", "granted"]
            finally:
                await _delete_streams(nats_url, prefix)
    finally:
        await fake.stop()


async def test_a_retry_after_recovery_cannot_place_the_order_its_redemption_was_taken_back_for(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    """Issue #19: a checkout redeems first and places its order in the wallet next. It dies in
    between (a free order, whose placement would grant the credit): recovery records the order
    failed in the wallet, then gives the slot back. The client's retry with the same
    Idempotency-Key replays the redemption and asks the wallet to place the order: the wallet
    refuses (the order is failed), so no credit is granted for a slot that was given back."""
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    code = new_code("LATE")
    sub = new_customer()
    key = f"retry-{uuid.uuid4().hex}"
    async with fresh_database(pg_url) as db:
        try:
            async with shop_on(
                tmp_path,
                nats_url,
                db,
                prefix,
                None,
                VL_FAILPOINTS="checkout.after_redeem",
                **RECOVERY,
            ) as first:
                await first.issue(code, 7, max_redemptions=1)
                with pytest.raises(aiohttp.ClientError):
                    await first.checkout(sub, plan_id="free", promo_code=code, key=key)
                assert await first.server.process.wait(30) == EXIT_CODE
            async with shop_on(tmp_path, nats_url, db, prefix, 0, **RECOVERY) as second:
                await wait_until(
                    order_failed_and_slot_free(second, sub, code),
                    timeout=40,
                    what="recovery compensates the order",
                )
                late = await second.checkout(sub, plan_id="free", promo_code=code, key=key)
                assert late.status == 409, late
                assert "interrupted" in late.json["error"]
                balance = await second.balance(sub)
                assert (balance["credit_baisa"], balance["balance_baisa"]) == (0, 0)
                assert balance["entries"] == []
                assert (await second.voucher(code))["times_redeemed"] == 0
                [order] = [o for o in await second.orders() if o["customer_id"] == sub]
                assert (order["status"], order["failure_reason"]) == ("failed", "interrupted")
                # A new checkout (a new key) takes the free slot, and its credit.
                retry = await second.checkout(sub, plan_id="free", promo_code=code)
                assert retry.status == 200, retry
                assert retry.json["credit_balance_baisa"] == 7 * OMR
                assert (await second.voucher(code))["times_redeemed"] == 1
        finally:
            await _delete_streams(nats_url, prefix)


async def test_a_campaign_codes_checkout_cut_after_its_redemption_gives_cap_and_budget_back(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    """The same cut for a campaign's code (issue #21): its redemption is the campaign's event,
    carrying the order; recovery records the order failed and gives the campaign's cap slot and
    budget share back, so the next customer gets them."""
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    sub = new_customer()
    async with fresh_database(pg_url) as db:
        try:
            async with shop_on(
                tmp_path,
                nats_url,
                db,
                prefix,
                None,
                VL_FAILPOINTS="checkout.after_redeem",
                **RECOVERY,
            ) as first:
                made = await first.request(
                    "POST",
                    "/billing/campaigns",
                    json_body={
                        "name": "cut",
                        "credit_omr": 5,
                        "max_redemptions": 1,
                        "budget_omr": 5,
                    },
                )
                assert made.status == 200, made
                cid = made.json["campaign_id"]
                codes = await first.request(
                    "POST", f"/billing/campaigns/{cid}/codes", json_body={"count": 2}
                )
                assert codes.status == 200, codes
                one, two = codes.json["codes"]
                await crash_during_checkout(first, sub, plan_id="free", promo_code=one)
            async with shop_on(tmp_path, nats_url, db, prefix, 0, **RECOVERY) as second:

                async def given_back() -> bool:
                    shown = (await second.request("GET", f"/billing/campaigns/{cid}")).json
                    orders = [o for o in await second.orders() if o["customer_id"] == sub]
                    failed = len(orders) == 1 and orders[0]["status"] == "failed"
                    return failed and shown["redemptions"] == 0

                await wait_until(given_back, timeout=40, what="recovery gives the slot back")
                [order] = [o for o in await second.orders() if o["customer_id"] == sub]
                assert order["failure_reason"] == "interrupted"
                shown = (await second.request("GET", f"/billing/campaigns/{cid}")).json
                assert shown["budget_left_baisa"] == 5 * OMR
                assert (await second.balance(sub))["credit_baisa"] == 0
                other = new_customer()
                ok = await second.checkout(other, plan_id="free", promo_code=two)
                assert ok.status == 200, ok
                assert ok.json["credit_balance_baisa"] == 5 * OMR
        finally:
            await _delete_streams(nats_url, prefix)
