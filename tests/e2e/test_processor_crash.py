"""Processor instances as real processes: SIGKILL the active one mid-storm."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.conftest import FAST, wait_until
from tests.e2e.faults import write_streams_file
from tests.e2e.helpers import ServiceProcess, clean_env, stop_processes
from tests.integration.test_processor import redemption_events, send_until_answered
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher

ADMIN = Actor(sub="admin", role="superadmin")


@pytest.mark.storm
async def test_sigkill_of_the_active_processor_process_mid_storm(
    tmp_path: Path,
    nats_url: str,
    pg_url: str,
    prefix: str,
    nc: Client,
    applied: streams.StreamsSpec,
    bus: CommandBus,
    store: JetStreamEventStore,
) -> None:
    # The processes read the same fast-failover declaration the test applied.
    streams_file = write_streams_file(tmp_path / "streams.yaml", FAST)

    procs = {}
    for name in ("proc-a", "proc-b"):
        env = clean_env(
            NATS_URL=nats_url,
            DATABASE_URL=pg_url,
            SUBJECT_PREFIX=prefix,
            STREAMS_FILE=str(streams_file),
            PROCESSOR_INSTANCE_ID=name,
        )
        procs[name] = ServiceProcess(["processors"], env, tmp_path / f"{name}.log")
        procs[name].start()
    try:
        kv = await nc.jetstream().key_value(applied.lease_bucket)
        code, cap, attempts = "KILL-9", 1200, 3000
        partition = applied.layout.partition_of(code)

        async def owner() -> str | None:
            try:
                entry = await kv.get(f"partition.{partition}")
            except Exception:  # noqa: BLE001 - not held yet
                return None
            return entry.value.decode() if entry.value else None

        async def balanced() -> bool:
            holders = []
            for p in range(applied.layout.partitions):
                try:
                    holders.append((await kv.get(f"partition.{p}")).value)
                except Exception:  # noqa: BLE001
                    return False
            return set(holders) == {b"proc-a", b"proc-b"}

        await wait_until(balanced, timeout=30, what="both processes holding partitions")
        issued = await bus.send(
            IssueVoucher(code=code, credit_baisa=1000, max_redemptions=cap), actor=ADMIN, timeout=30
        )
        assert isinstance(issued, Accepted)
        active = await owner()
        assert active in procs

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        done: list[Accepted | Rejected] = []
        in_flight = asyncio.Semaphore(40)  # a steady storm, so the kill lands mid-way

        async def client(i: int) -> Accepted | Rejected:
            reply = await send_until_answered(
                bus, RedeemVoucher(code=code, customer_id=f"k{i}"), f"kill-{i}", deadline, in_flight
            )
            done.append(reply)
            return reply

        tasks = [asyncio.create_task(client(i)) for i in range(attempts)]
        await wait_until(lambda: len(done) >= 300, what="storm under way")
        procs[active].signal(signal.SIGKILL)
        killed_at = len(done)

        replies = await asyncio.gather(*tasks)

        assert killed_at < cap  # the survivor had to accept the rest
        survivor = next(n for n in procs if n != active)
        await wait_until(lambda: _is(owner(), survivor), timeout=30, what="takeover")
        accepted = [r for r in replies if isinstance(r, Accepted)]
        assert len(accepted) == cap
        assert Counter(r.reason for r in replies if isinstance(r, Rejected)) == {
            "cap_reached": attempts - cap
        }
        on_stream = await redemption_events(store, applied, code)
        assert len(on_stream) == cap
        assert {r.redemption.customer_id for r in accepted if r.redemption} == set(on_stream)
    finally:
        await stop_processes(procs.values())


async def _is(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]
