"""Issue #7, item 1: a 3-node NATS cluster, streams at 3 replicas, two ``voucher-ledger
processors`` processes and a ``voucher-ledger serve`` (projectors) on the cluster's server list.
Mid-storm the event stream's leader node is SIGKILLed, and then the processor process that holds
the voucher's partition. Afterwards: the cap is exact, every accepted reply's event is on the
stream, no command took effect twice, the read models converge, and ``verify`` is clean.

``VL_FAULT_SCALE=N`` multiplies the storm (CI: 1,200 attempts on a cap of 500)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import (
    FAST,
    connect,
    fresh_database,
    role_credentials,
    running_cluster,
    wait_until,
)
from tests.e2e.api_helpers import serve_on
from tests.e2e.faults import (
    assert_each_command_once,
    assert_replies_on_stream,
    fault_scale,
    replicas_current,
    stream_info,
    stream_leader,
    verify_cli,
    wait_read_models,
    write_streams_file,
)
from tests.e2e.helpers import ServiceProcess, clean_env, stop_processes
from tests.integration.test_processor import issue, send_until_answered
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.auth import role_permissions
from voucher_ledger.ledger.events import VoucherRedeemed
from voucher_ledger.ledger.voucher import RedeemVoucher
from voucher_ledger.service.embedded import EmbeddedNatsCluster
from voucher_ledger.signing.keys import create_key_pair

REPLICAS = {"EVENT_REPLICAS": "3", "COMMAND_REPLICAS": "3"}


class PausableLimit:
    """An in-flight limit for a storm's clients that the test can hold: while paused, clients
    that got a slot wait before sending (what is already sent completes)."""

    def __init__(self, slots: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._open = asyncio.Event()
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        self._open.clear()

    async def resume(self) -> None:
        self._open.set()
        for _ in range(3):  # let the held clients send before the caller's next step
            await asyncio.sleep(0)

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        try:
            await self._open.wait()
        except BaseException:
            self._slots.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._slots.release()


@pytest.fixture
def cluster_prefix() -> str:
    return f"cl{uuid.uuid4().hex[:10]}"


@pytest.fixture
def nats_cluster(cluster_prefix: str) -> Iterator[EmbeddedNatsCluster]:
    """The 3-node cluster with authorization on: every process connects as its role (the
    processors, serve's service side, verify), with the permissions for this test's streams;
    the test's own client is the service, and streams are applied as the admin."""
    spec = streams.load_spec(cluster_prefix, overrides=FAST, event_replicas=3, command_replicas=3)
    with running_cluster(role_permissions(spec)) as cluster:
        yield cluster


@pytest.mark.storm
async def test_event_stream_leader_and_a_processor_killed_mid_storm(
    tmp_path: Path, nats_cluster: EmbeddedNatsCluster, pg_url: str, cluster_prefix: str
) -> None:
    started = time.monotonic()
    scale = fault_scale()
    code, cap, attempts = "CLUSTER-1", 500 * scale, 1200 * scale
    prefix = cluster_prefix
    url = nats_cluster.url
    streams_file = write_streams_file(tmp_path / "streams.yaml", FAST)
    spec = streams.load_spec(prefix, overrides=FAST, event_replicas=3, command_replicas=3)
    users = nats_cluster.users
    nc = await connect(url, role_credentials(users, "service"))
    procs: dict[str, ServiceProcess] = {}
    async with fresh_database(pg_url) as db:
        env = {"SUBJECT_PREFIX": prefix, "STREAMS_FILE": str(streams_file), **REPLICAS}
        # Signed events: both processor instances sign with one key, serve checks with its
        # public half (as a deployment on several hosts is configured).
        create_key_pair(tmp_path / "keys")
        signing = {"SIGNING_KEY_FILE": str(tmp_path / "keys" / "ledger-signing.key")}
        checking = {"SIGNING_PUBLIC_KEY_FILE": str(tmp_path / "keys" / "ledger-signing.pub")}
        try:
            admin = await connect(url, role_credentials(users, "admin"))
            await streams.apply(admin, spec)
            await admin.close()
            assert (await stream_info(nc, spec.event_stream))["config"]["num_replicas"] == 3
            for name in ("proc-a", "proc-b"):
                procs[name] = ServiceProcess(
                    ["processors"],
                    clean_env(
                        NATS_URL=url,
                        DATABASE_URL=db,
                        PROCESSOR_INSTANCE_ID=name,
                        DATA_DIR=str(tmp_path / name),
                        **env,
                        **signing,
                        **users["processors"].env(),
                    ),
                    tmp_path / f"{name}.log",
                )
                procs[name].start()
            # The read models: a serve process without processors, on the same server list.
            service_env = {**env, **checking, **users["service"].env()}
            async with serve_on(tmp_path, url, db, prefix, RUN_PROCESSORS="false", **service_env):
                bus = CommandBus(nc, spec.layout, spec.command_stream)
                await bus.start()
                kv = await nc.jetstream().key_value(spec.lease_bucket)
                partition = spec.layout.partition_of(code)

                async def holder(p: int) -> str | None:
                    try:
                        entry = await kv.get(f"partition.{p}")
                    except Exception:  # noqa: BLE001 - not held (yet)
                        return None
                    return entry.value.decode() if entry.value else None

                async def balanced() -> bool:
                    held = {await holder(p) for p in range(spec.layout.partitions)}
                    return held == set(procs)

                await wait_until(balanced, timeout=60, what="both processes holding partitions")
                await issue(bus, code, cap)

                loop = asyncio.get_running_loop()
                deadline = loop.time() + 240
                done: list[Accepted | Rejected] = []
                # At most 40 clients in flight. The faults are timed by acceptances (the first
                # `cap` decisions are all acceptances): the client whose reply makes the count
                # reach a fault's mark holds the storm at once, so the fault lands before the
                # cap however fast the processors drain it (a poll of the count could see the
                # cap already reached); the storm runs again just before each kill.
                in_flight = PausableLimit(40)
                marks = {cap // 5, cap // 2}
                accepted_count = 0

                async def client(i: int) -> Accepted | Rejected:
                    nonlocal accepted_count
                    reply = await send_until_answered(
                        bus,
                        RedeemVoucher(code=code, customer_id=f"c{i}"),
                        f"cl-{i}",
                        deadline,
                        in_flight,
                    )
                    done.append(reply)
                    if isinstance(reply, Accepted):
                        accepted_count += 1
                        if accepted_count in marks:
                            in_flight.pause()
                    return reply

                tasks = [asyncio.create_task(client(i)) for i in range(attempts)]

                # Fault 1: SIGKILL the node leading the event stream.
                await wait_until(lambda: in_flight.paused, timeout=120, what="storm")
                leader = await stream_leader(nc, spec.event_stream)
                killed_node = nats_cluster.index_of(leader)
                await in_flight.resume()
                nats_cluster.kill(killed_node)
                node_killed_at = len(done)

                # Fault 2: SIGKILL the processor process holding the voucher's partition.
                await wait_until(lambda: in_flight.paused, timeout=120, what="storm")
                holders: list[str | None] = []

                async def held() -> bool:  # a lease can be between holders after the election
                    holders.append(await holder(partition))
                    return holders[-1] is not None

                await wait_until(held, timeout=30, what="a holder of the voucher's partition")
                active = holders[-1]
                assert active in procs, active
                await in_flight.resume()
                procs[active].signal(signal.SIGKILL)
                proc_killed_at = len(done)
                new_leader = await stream_leader(nc, spec.event_stream, other_than=leader)

                replies = await asyncio.gather(*tasks)
                storm_seconds = time.monotonic() - started

                # Both faults hit while redemptions were still being accepted.
                accepted = [r for r in replies if isinstance(r, Accepted)]
                accepted_before = sum(1 for r in done[:proc_killed_at] if isinstance(r, Accepted))
                assert 0 < accepted_before < cap, (node_killed_at, proc_killed_at)
                survivor = next(n for n in procs if n != active)
                await wait_until(
                    lambda: _eq(holder(partition), survivor), timeout=30, what="takeover"
                )

                # The cap is exact, in the replies and on the stream.
                assert len(accepted) == cap
                assert Counter(r.reason for r in replies if isinstance(r, Rejected)) == {
                    "cap_reached": attempts - cap
                }
                nats_cluster.restart(killed_node)
                await replicas_current(nc, spec.event_stream, 3)
                store = JetStreamEventStore(nc, spec.event_stream)
                history = await store.load(spec.layout.voucher_subject(code))
                redeemed = [r for r in history if isinstance(r.envelope.event, VoucherRedeemed)]
                assert len(redeemed) == cap
                assert_each_command_once(history)
                assert_replies_on_stream(accepted, history)
                assert {r.redemption.customer_id for r in accepted if r.redemption} == {
                    r.envelope.event.customer_id
                    for r in redeemed
                    if isinstance(r.envelope.event, VoucherRedeemed)
                }

                # The read models converge to the stream, and verify says so.
                head = int((await stream_info(nc, spec.event_stream))["state"]["last_seq"])
                await wait_read_models(db, head)
                conn = await asyncpg.connect(db)
                try:
                    row = await conn.fetchrow(
                        "SELECT times_redeemed, "
                        "(SELECT count(*) FROM redemptions WHERE code = $1) AS n "
                        "FROM vouchers WHERE code = $1",
                        code,
                    )
                finally:
                    await conn.close()
                assert (row["times_redeemed"], row["n"]) == (cap, cap)
                out = await verify_cli(
                    clean_env(
                        NATS_URL=url,
                        DATABASE_URL=db,
                        SUBJECT_PREFIX=prefix,
                        **checking,  # every event's signature checked too
                        **users["service"].env(),
                    )
                )
                assert f"signatures: {head:,} event(s) checked with key" in out
                await bus.close()
                print(
                    f"\ncluster storm: {attempts} attempts, cap {cap}; node {leader} killed "
                    f"after {node_killed_at} replies (new leader {new_leader}), processor "
                    f"{active} killed after {proc_killed_at}; storm + checks "
                    f"{time.monotonic() - started:.1f}s (storm {storm_seconds:.1f}s); "
                    f"verify: {out.strip().splitlines()[-1]}"
                )
        finally:
            await stop_processes(procs.values())
            await nc.close()


async def _eq(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]
