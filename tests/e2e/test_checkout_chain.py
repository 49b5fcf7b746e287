"""A checkout's placement chained to its redemption (issue #19), on a real ``serve`` with its
processor process: the processor that decides the redemption places the order itself and the
checkout gets both outcomes in one reply. And the window that leaves open: the processor
process killed after the redemption is stored and before the placement (a failpoint exits it
there, as a SIGKILL would) costs the customer a retry with the same Idempotency-Key, which
completes the order once, with the one redemption's credit."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from tests.conftest import fresh_database, wait_until
from tests.e2e.api_helpers import _delete_streams
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop_on

OMR = 1000
FAILPOINT = "processor.before_chained_placement"


async def chained(s: Shop) -> float:
    """The processors' count of chained placements, from ``/metrics``."""
    reply = await s.request("GET", "/metrics")
    assert reply.status == 200, reply
    found = re.search(r"^voucher_ledger_processor_chained_total (\S+)$", reply.text, re.M)
    assert found is not None, reply.text[-2000:]
    return float(found.group(1))


async def test_a_promo_checkout_is_placed_by_the_processor_that_redeemed_it(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    prefix = f"chain{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_url) as db:
        try:
            async with shop_on(tmp_path, nats_url, db, prefix, 0) as s:
                code = new_code("CHAIN")
                await s.issue(code, 20, max_redemptions=5)
                before = await chained(s)
                subs = [new_customer() for _ in range(3)]
                for sub in subs:
                    reply = await s.checkout(sub, plan_id="starter", promo_code=code)
                    assert reply.status == 200, reply
                    assert reply.json["paid_by_credit"] is True
                    assert reply.json["credit_balance_baisa"] == 11 * OMR
                # Without a promo code there is no redemption to chain to.
                plain = await s.checkout(new_customer(), plan_id="free")
                assert plain.status == 200, plain
                assert await chained(s) == before + 3
                assert (await s.voucher(code))["times_redeemed"] == 3
        finally:
            await _delete_streams(nats_url, prefix)


async def test_a_processor_killed_between_the_redemption_and_its_placement_costs_a_retry(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    prefix = f"chain{uuid.uuid4().hex[:8]}"
    code = new_code("CUT")
    sub = new_customer()
    key = f"cut-{uuid.uuid4().hex}"
    async with fresh_database(pg_url) as db:
        try:
            async with shop_on(
                tmp_path, nats_url, db, prefix, 0, VL_FAILPOINTS=FAILPOINT, COMMAND_TIMEOUT="3"
            ) as first:
                await first.issue(code, 20, max_redemptions=1)
                cut = await first.checkout(sub, plan_id="free", promo_code=code, key=key)
                # No answer from the ledger: outcome unknown, retry with the same key.
                assert cut.status == 503, cut
                assert "Idempotency-Key" in cut.json["error"]
                assert f"failpoint {FAILPOINT} reached" in first.server.process.output()

                async def redeemed() -> bool:
                    return (await first.voucher(code))["times_redeemed"] == 1

                # The redemption was stored; no order reached the wallet.
                await wait_until(redeemed, timeout=20, what="the redemption in the read models")
                assert [o for o in await first.orders() if o["customer_id"] == sub] == []
            async with shop_on(tmp_path, nats_url, db, prefix, 0) as second:
                retry = await second.checkout(sub, plan_id="free", promo_code=code, key=key)
                assert retry.status == 200, retry
                assert retry.json["paid_by_credit"] is True
                assert retry.json["credit_balance_baisa"] == 20 * OMR
                again = await second.checkout(sub, plan_id="free", promo_code=code, key=key)
                assert again.status == 200, again
                assert again.json["order_id"] == retry.json["order_id"]
                [order] = [o for o in await second.orders() if o["customer_id"] == sub]
                assert order["status"] == "completed"
                assert (await second.voucher(code))["times_redeemed"] == 1
                redemptions = await second.request("GET", f"/billing/vouchers/{code}/redemptions")
                [redemption] = redemptions.json["redemptions"]
                assert redemption["customer_id"] == sub
                assert redemption["reversed_at"] is None
                balance = await second.balance(sub)
                assert balance["credit_baisa"] == 20 * OMR
                assert len(balance["entries"]) == 1
        finally:
            await _delete_streams(nats_url, prefix)
