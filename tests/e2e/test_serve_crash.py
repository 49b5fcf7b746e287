"""Issue #7, item 4: ``voucher-ledger serve`` SIGKILLed in the middle of a storm of HTTP
checkouts with a promo code (and of voucher issues), then started again on the same NATS and
PostgreSQL. No acknowledged write is lost, a retry with the same Idempotency-Key gets the
original answer and has no second effect, and the cap is exact.

(``test_checkout_crash.py`` stops one checkout at a chosen step of the saga; this one kills the
whole service at a random moment under load.) ``VL_FAULT_SCALE=N`` multiplies the storm (CI: 160
checkouts on a cap of 60, 20 issues)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import connect, fresh_database, wait_until
from tests.e2e.api_helpers import Reply, _delete_streams
from tests.e2e.checkout_helpers import Shop, new_code, shop_on
from tests.e2e.faults import (
    assert_each_command_once,
    fault_scale,
    stream_info,
    verify_cli,
    wait_read_models,
)
from tests.e2e.helpers import clean_env
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.events import RedemptionReversed, VoucherRedeemed

# Long enough that a checkout slowed down by the loaded machine is not rolled back as
# "interrupted" while it runs; a checkout cut by the kill is finished by its retry.
ENV = {"CHECKOUT_RECOVERY_AFTER": "30", "CHECKOUT_RECOVERY_INTERVAL": "0.5"}
DEFINITIVE = {200, 400, 409}  # completed; refused (cap reached); rolled back (interrupted)


async def _answer(call: Any) -> Reply | None:
    """The service's answer, or None when the connection died with it."""
    try:
        reply: Reply = await call
    except (aiohttp.ClientError, TimeoutError):
        return None
    return reply


async def _until_definitive(shop: Shop, send: Any, deadline: float) -> Reply:
    """Retry (same Idempotency-Key) while the service answers 503 or not at all."""
    while True:
        reply = await _answer(send(shop))
        if reply is not None and reply.status in DEFINITIVE:
            return reply
        assert reply is None or reply.status == 503, reply
        assert time.monotonic() < deadline, f"no definitive answer: {reply}"
        await asyncio.sleep(0.2)


@pytest.mark.storm
async def test_sigkill_of_serve_mid_storm_loses_no_acknowledged_write(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    started = time.monotonic()
    scale = fault_scale()
    customers, cap, issues = 160 * scale, 60 * scale, 20 * scale
    code = new_code("CRASHSTORM")
    prefix = f"sc{uuid.uuid4().hex[:10]}"
    keys = [f"ck-{i}-{uuid.uuid4().hex[:6]}" for i in range(customers)]
    subs = [f"crash-cust-{i}" for i in range(customers)]
    issue_codes = [new_code(f"ISS{i}") for i in range(issues)]

    def checkout(i: int) -> Any:
        return lambda s: s.checkout(subs[i], plan_id="starter", promo_code=code, key=keys[i])

    def issue(j: int) -> Any:
        body = {"code": issue_codes[j], "credit_omr": 3, "max_redemptions": 5}
        headers = {"Idempotency-Key": f"iss-{issue_codes[j]}"}
        return lambda s: s.request(
            "POST", "/billing/vouchers/issue", json_body=body, headers=headers
        )

    async with fresh_database(pg_url) as db:
        try:
            # --- the storm, and the kill
            before: dict[str, Reply | None] = {}
            killed = asyncio.Event()
            async with shop_on(tmp_path, nats_url, db, prefix, None, **ENV) as first:
                await first.issue(code, 20, max_redemptions=cap)
                in_flight = asyncio.Semaphore(16)

                async def one(name: str, send: Any) -> None:
                    async with in_flight:
                        if not killed.is_set():
                            before[name] = await _answer(send(first))

                calls = [(f"c{i}", checkout(i)) for i in range(customers)]
                for j in range(issues):  # an issue among every few checkouts
                    calls.insert(j * customers // issues, (f"i{j}", issue(j)))
                tasks = [asyncio.create_task(one(name, send)) for name, send in calls]
                await wait_until(
                    lambda: sum(r is not None for r in before.values()) >= customers // 3,
                    timeout=120,
                    what="storm under way",
                )
                first.server.process.signal(signal.SIGKILL)
                killed.set()
                await asyncio.gather(*tasks)
                assert await first.server.process.wait(10) == -signal.SIGKILL
            acked = {n: r for n, r in before.items() if r is not None and r.status == 200}
            refused = {n: r for n, r in before.items() if r is not None and r.status == 400}
            cut = [n for n, _ in calls if n not in acked and n not in refused]
            for reply in before.values():  # never a 500, whatever happened
                assert reply is None or reply.status in {200, 400, 409, 503}, reply
            kill_seconds = time.monotonic() - started

            # --- the restart: every answer stands; every cut request is finished by its retry
            async with shop_on(tmp_path, nats_url, db, prefix, 0, **ENV) as second:
                sends = dict(calls)
                deadline = time.monotonic() + 180
                names = [n for n, _ in calls]
                answers = await asyncio.gather(
                    *(_until_definitive(second, sends[n], deadline) for n in names)
                )
                after = dict(zip(names, answers, strict=True))
                for name, reply in acked.items():
                    assert after[name].status == 200, (name, after[name])
                    assert after[name].json == reply.json, name  # the original answer
                for name, reply in refused.items():
                    assert (after[name].status, after[name].json) == (400, reply.json), name

                # The cap is exact: fresh customers take what is left, one by one, until one
                # is refused.
                fresh = 0
                while True:
                    reply = await _until_definitive(
                        second,
                        lambda s, n=fresh: s.checkout(
                            f"late-{n}", promo_code=code, key=f"late-{n}"
                        ),
                        deadline,
                    )
                    fresh += 1
                    if reply.status == 400:
                        break
                    assert reply.status == 200, reply
                    assert fresh <= cap, "more redemptions than the cap"
                voucher = await second.voucher(code)
                assert voucher["times_redeemed"] == cap

                # The stream: each command once, every accepted checkout's redemption live.
                nc = await connect(nats_url)
                try:
                    spec = streams.load_spec(prefix)
                    store = JetStreamEventStore(nc, spec.event_stream)
                    history = await store.load(spec.layout.voucher_subject(code))
                    assert_each_command_once(history)
                    redeemed = Counter(
                        r.envelope.event.customer_id
                        for r in history
                        if isinstance(r.envelope.event, VoucherRedeemed)
                    )
                    reversed_ = Counter(
                        r.envelope.event.customer_id
                        for r in history
                        if isinstance(r.envelope.event, RedemptionReversed)
                    )
                    assert max(redeemed.values()) == 1  # one redemption per customer, ever
                    assert sum(redeemed.values()) - sum(reversed_.values()) == cap
                    completed = {
                        subs[int(n[1:])]
                        for n, r in after.items()
                        if n.startswith("c") and r.status == 200
                    }
                    assert len(completed) + fresh - 1 == cap
                    assert {c for c in completed if not reversed_[c]} == completed
                    assert all(redeemed[c] for c in completed)
                    for customer in completed:
                        wallet = await store.load(spec.layout.wallet_subject(customer))
                        counts = assert_each_command_once(wallet)
                        # the settlement: the order placed and settled in one decision (#19)
                        assert any(k.startswith("place-") for k in counts), customer
                    # Every issue that was acknowledged (before or after the kill) is there.
                    for j in range(issues):
                        reply = after[f"i{j}"]
                        assert reply.status == 200, reply
                        issued = await store.load(spec.layout.voucher_subject(issue_codes[j]))
                        assert len(issued) == 1
                        if f"i{j}" in acked:
                            assert reply.json == acked[f"i{j}"].json
                    head = int((await stream_info(nc, spec.event_stream))["state"]["last_seq"])
                finally:
                    await nc.close()

                # The read models: rows for every acknowledged write; verify is clean.
                await wait_read_models(db, head)
                orders = await second.db(
                    "SELECT customer_id, order_id, status FROM orders WHERE promo_code = $1", code
                )
                done = {o["customer_id"]: o for o in orders if o["status"] == "completed"}
                assert set(done) == completed | {f"late-{n}" for n in range(fresh - 1)}
                for name, reply in acked.items():
                    if name.startswith("c"):
                        assert done[subs[int(name[1:])]]["order_id"] == reply.json["order_id"]
                rows = await second.db(
                    "SELECT customer_id FROM redemptions WHERE code = $1 AND reversed_at IS NULL",
                    code,
                )
                assert sorted(r["customer_id"] for r in rows) == sorted(done)
                for j in range(issues):
                    assert (await second.voucher(issue_codes[j]))["max_redemptions"] == 5
                await verify_cli(
                    clean_env(NATS_URL=nats_url, DATABASE_URL=db, SUBJECT_PREFIX=prefix)
                )
            outcome = Counter(r.status for n, r in after.items() if n in cut)
            print(
                f"\nserve crash: {customers} checkouts (cap {cap}) + {issues} issues; killed "
                f"after {len(acked)} acknowledged, {len(refused)} refused, {len(cut)} cut "
                f"({sum(r is None for r in before.values())} of them in flight) "
                f"({kill_seconds:.1f}s); retries of cut requests: {dict(outcome)}; "
                f"{fresh - 1} late customers filled the cap; "
                f"total {time.monotonic() - started:.1f}s"
            )
        finally:
            await _delete_streams(nats_url, prefix)
