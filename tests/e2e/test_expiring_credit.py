"""Issue #20: expiring credit, against a real ``voucher-ledger serve`` (restarted on the same
data). A voucher's ``credit_valid_for`` makes the credit of a redemption expire that long after
it; a checkout spends the soonest-expiring credit first; expired credit is never counted nor
spendable; its remainder leaves the account as one ``wallet.credit_expired`` event, never two,
also across a restart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import connect, fresh_database, wait_until
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop_on
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.events import CreditExpired

OMR = 1000
FAST = {"CREDIT_EXPIRY_INTERVAL": "0.5"}


async def issue(s: Shop, body: dict[str, Any]) -> dict[str, Any]:
    reply = await s.request("POST", "/billing/vouchers/issue", json_body=body)
    assert reply.status == 200, reply
    out: dict[str, Any] = reply.json
    return out


async def expired_events(nats_url: str, prefix: str, account: str) -> list[CreditExpired]:
    """The account's credit_expired events, read from the event stream itself."""
    nc = await connect(nats_url)
    try:
        spec = streams.load_spec(prefix)
        store = JetStreamEventStore(nc, spec.event_stream)
        history = await store.load(spec.layout.wallet_subject(account))
    finally:
        await nc.close()
    return [r.envelope.event for r in history if isinstance(r.envelope.event, CreditExpired)]


async def test_soonest_expiring_credit_is_spent_first_and_its_rest_expires_once(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    prefix = f"exp{uuid.uuid4().hex[:8]}"
    sub = new_customer("exp")
    async with fresh_database(pg_url) as db:
        async with shop_on(tmp_path, nats_url, db, prefix, 0, **FAST) as s:
            soon, lasting = new_code("SOON"), new_code("LAST")
            made = await issue(s, {"code": soon, "credit_omr": 10, "credit_valid_for": "pt8s"})
            assert made["credit_valid_for"] == "PT8S"
            await issue(s, {"code": lasting, "credit_omr": 10})
            for code in (lasting, soon):  # the lasting grant first: order is not what decides
                reply = await s.checkout(sub, "free", promo_code=code)
                assert reply.status == 200, reply
            before = await s.balance(sub)
            assert before["credit_baisa"] == 20 * OMR
            [expiring] = before["expiring"]
            assert (expiring["amount_baisa"], expiring["code"]) == (10 * OMR, soon)
            expires_at = datetime.fromisoformat(expiring["expires_at"])

            spent = await s.checkout(sub, "starter")  # 9 OMR, from the expiring grant
            assert spent.status == 200, spent
            assert (spent.json["paid_by_credit"], spent.json["credit_balance"]) == (True, 11)
            [left] = (await s.balance(sub))["expiring"]
            assert left["amount_baisa"] == 1 * OMR

            async def expired() -> bool:
                balance = await s.balance(sub)
                return any(e["kind"] == "expired" for e in balance["entries"])

            await wait_until(expired, timeout=40, what="the expired remainder to leave")
            after = await s.balance(sub)
            assert (after["credit_baisa"], after["balance_baisa"], after["expiring"]) == (
                10 * OMR,
                10 * OMR,
                [],
            )
            [entry] = [e for e in after["entries"] if e["kind"] == "expired"]
            assert (entry["amount_baisa"], entry["reason"]) == (-1 * OMR, "credit-expired")
            [event] = await expired_events(nats_url, prefix, sub)
            assert (event.amount_baisa, event.code, event.expires_at) == (1 * OMR, soon, expires_at)

            # expired credit is never spendable: 10 OMR left, a 12 OMR order is not covered
            short = await s.checkout(sub, "starter", ["backup"])
            assert short.status == 503, short  # no Stripe here: the amount due cannot be paid

        # A restart: the sweeper runs again (it expires a later grant of another account) and
        # never expires the first one twice.
        async with shop_on(tmp_path, nats_url, db, prefix, 0, **FAST) as again:
            other = new_customer("exp2")
            code = new_code("BLINK")
            await issue(again, {"code": code, "credit_omr": 3, "credit_valid_for": "PT1S"})
            reply = await again.checkout(other, "free", promo_code=code)
            assert reply.status == 200, reply

            async def other_expired() -> bool:
                return bool(await expired_events(nats_url, prefix, other))

            await wait_until(other_expired, timeout=40, what="the sweeper after the restart")
            assert len(await expired_events(nats_url, prefix, sub)) == 1
            assert (await again.balance(sub))["credit_baisa"] == 10 * OMR
            assert (await again.balance(other))["credit_baisa"] == 0
            ready = await again.request("GET", "/readyz", sub=None)
            assert ready.status == 200, ready


async def test_credit_valid_for_is_validated_kept_and_cleared(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    prefix = f"exv{uuid.uuid4().hex[:8]}"
    async with fresh_database(pg_url) as db, shop_on(tmp_path, nats_url, db, prefix, 0) as s:
        code = new_code("DUR")
        for bad in ("P1M", "P1Y", "90 days", "P", "PT0S", "P40000W", 90):
            reply = await s.request(
                "POST",
                "/billing/vouchers/issue",
                json_body={"code": code, "credit_omr": 1, "credit_valid_for": bad},
            )
            assert "credit_valid_for" in assert_json_error(reply, 400), bad
        made = await issue(s, {"code": code, "credit_omr": 1, "credit_valid_for": "P2W"})
        assert made["credit_valid_for"] == "P14D"
        kept = await issue(s, {"code": code, "credit_omr": 2})
        assert kept["credit_valid_for"] == "P14D"
        detail = await s.voucher(code)
        assert detail["credit_valid_for"] == "P14D"
        sub = new_customer()
        redeemed = await s.checkout(sub, "free", promo_code=code)
        assert redeemed.status == 200, redeemed
        [lot] = (await s.balance(sub))["expiring"]
        # fourteen days after the redemption: after the voucher was issued, before now
        granted = datetime.fromisoformat(lot["expires_at"]) - timedelta(days=14)
        assert datetime.fromisoformat(detail["updated_at"]) <= granted <= datetime.now(UTC)
        cleared = await issue(s, {"code": code, "credit_omr": 2, "credit_valid_for": None})
        assert cleared["credit_valid_for"] is None
