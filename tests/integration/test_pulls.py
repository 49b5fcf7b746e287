"""The raw pull loop over a real nats-server, and read-your-writes waiters over real Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.conftest import connect, stream_state
from voucher_ledger.jetstream.direct import write_now
from voucher_ledger.jetstream.pulls import PullLoop, stream_sequence
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.projector import ProjectionStatus


@pytest.fixture
async def pull_stream(nc: Client, prefix: str) -> AsyncIterator[tuple[str, str, str]]:
    stream, durable, subject = f"{prefix.upper()}_PULLS", "WORKER", f"{prefix}.pulls"
    config = {"name": stream, "subjects": [f"{subject}.>"], "storage": "memory"}
    await nc.request(f"$JS.API.STREAM.CREATE.{stream}", json.dumps(config).encode(), timeout=5)
    consumer = {
        "stream_name": stream,
        "config": {"durable_name": durable, "ack_policy": "explicit", "ack_wait": 30_000_000_000},
    }
    answer = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}", json.dumps(consumer).encode(), timeout=5
    )
    assert "error" not in json.loads(answer.data)
    yield stream, durable, subject
    await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=5)


async def test_pull_loop_hands_over_every_message_once_in_order_in_bounded_batches(
    nc: Client, pull_stream: tuple[str, str, str]
) -> None:
    stream, durable, subject = pull_stream
    js = nc.jetstream()
    total, batch = 2_500, 100
    for i in range(total):
        await js.publish(f"{subject}.{i % 7}", str(i).encode())
    pulls = PullLoop(nc, stream, durable, batch=batch, expires=0.5)
    await pulls.start()
    seen: list[int] = []
    bodies: list[int] = []
    try:
        while len(seen) < total:
            msgs = await pulls.next(timeout=5.0)
            assert msgs, f"stalled after {len(seen)} messages"
            assert len(msgs) <= batch
            for msg in msgs:
                seen.append(stream_sequence(msg))
                bodies.append(int(msg.data))
                await msg.ack()
        # Nothing is left, and an empty wait ends with [] rather than hanging.
        assert await pulls.next(timeout=0.6) == []
    finally:
        await pulls.stop()
    assert seen == list(range(1, total + 1))
    assert bodies == list(range(total))
    await nc.flush()
    info = json.loads(
        (await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{durable}", b"", timeout=5)).data
    )
    assert info["num_ack_pending"] == 0
    assert info["num_pending"] == 0
    assert (await stream_state(nc, stream))["messages"] == total


async def test_pull_loop_picks_up_messages_published_while_it_waits(
    nc: Client, pull_stream: tuple[str, str, str]
) -> None:
    stream, durable, subject = pull_stream
    pulls = PullLoop(nc, stream, durable, batch=10, expires=0.3)
    await pulls.start()
    try:
        assert await pulls.next(timeout=0.5) == []  # its pull requests expired meanwhile

        async def later() -> None:
            await asyncio.sleep(0.4)
            await nc.jetstream().publish(f"{subject}.late", b"late")

        publisher = asyncio.create_task(later())
        msgs = await pulls.next(timeout=5.0)
        await publisher
        assert [m.data for m in msgs] == [b"late"]
        await msgs[0].ack()
    finally:
        await pulls.stop()


async def test_a_nudge_ends_the_wait_at_once_and_the_deliveries_are_not_lost(
    nc: Client, pull_stream: tuple[str, str, str]
) -> None:
    """``nudge``: a processor handed a chained placement by another partition of its process
    stops waiting for its own deliveries (a second's wait otherwise), whether the nudge comes
    during the wait or before it; what arrives later is still handed over."""
    stream, durable, subject = pull_stream
    pulls = PullLoop(nc, stream, durable, batch=10, expires=5.0)
    await pulls.start()
    try:
        # Waits of an hour: without the nudge, wait_for gives up on them.
        asyncio.get_running_loop().call_later(0.05, pulls.nudge)
        assert await asyncio.wait_for(pulls.next(timeout=3600.0), 30) == []
        pulls.nudge()  # before the wait: the next one returns at once, once
        assert await asyncio.wait_for(pulls.next(timeout=3600.0), 30) == []
        await nc.jetstream().publish(f"{subject}.after", b"after")
        msgs = await pulls.next(timeout=5.0)
        assert [m.data for m in msgs] == [b"after"]
        await msgs[0].ack()
    finally:
        await pulls.stop()


async def test_pull_loop_stops_waiting_when_the_other_thing_it_waits_for_is_done(
    nc: Client, pull_stream: tuple[str, str, str]
) -> None:
    """``until``: a processor with an append in flight waits for new commands or for the
    append's end, whichever comes first."""
    stream, durable, subject = pull_stream
    pulls = PullLoop(nc, stream, durable, batch=10, expires=5.0)
    await pulls.start()
    try:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.2, done.set_result, None)
        # A minute's timeout: only ``until`` can end this wait within the 30 s allowed.
        assert await asyncio.wait_for(pulls.next(timeout=60.0, until=done), 30) == []
        assert done.done()

        pending: asyncio.Future[None] = loop.create_future()
        await nc.jetstream().publish(f"{subject}.one", b"one")
        msgs = await asyncio.wait_for(pulls.next(timeout=60.0, until=pending), 30)
        assert [m.data for m in msgs] == [b"one"]  # a delivery ends the wait as well
        assert not pending.done()
        await msgs[0].ack()
    finally:
        await pulls.stop()


@pytest.mark.usefixtures("fast_paths_on")
async def test_write_now_sends_what_is_buffered_once_in_order(nc: Client, nats_url: str) -> None:
    """The processor hands nats.py's buffer to the socket itself (``write_now``) before the
    flusher task gets to it: nothing is lost, repeated or reordered, and a closed client is
    left alone."""
    other = await connect(nats_url)
    got: list[bytes] = []
    try:

        async def received(msg: Msg) -> None:
            got.append(msg.data)

        sub = await other.subscribe("write-now.test", cb=received)
        await other.flush()
        for i in range(50):
            await nc.publish("write-now.test", str(i).encode())
            if i % 7 == 0:
                write_now(nc)
                assert nc._pending == []
        write_now(nc)
        await nc.flush()
        for _ in range(500):
            if len(got) >= 50:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # anything sent twice would arrive by now
        assert got == [str(i).encode() for i in range(50)]
        await sub.unsubscribe()
    finally:
        await other.close()
    closed = await connect(nats_url)
    await closed.close()
    write_now(closed)  # nothing to do, no error


@pytest.fixture
async def status(database: str) -> AsyncIterator[ProjectionStatus]:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    await pool.executemany(
        "INSERT INTO projection_checkpoints (projection) VALUES ($1)", [("a",), ("b",)]
    )
    yield ProjectionStatus(pool, ["a", "b"])
    await pool.close()


async def test_waiters_wake_when_every_projection_reached_their_write(
    status: ProjectionStatus,
) -> None:
    low = asyncio.create_task(status.wait_for(5, timeout=30))
    high = asyncio.create_task(status.wait_for(9, timeout=30))
    status.advance("a", 7)
    await asyncio.sleep(0.1)
    assert not low.done()  # "b" is still behind
    status.advance("b", 6)
    assert await asyncio.wait_for(low, 5) is True
    assert not high.done()
    status.advance("a", 12)
    status.advance("b", 9)
    assert await asyncio.wait_for(high, 5) is True
    assert await status.wait_for(9, timeout=0) is True  # already there


async def test_waiters_give_up_after_their_timeout(status: ProjectionStatus) -> None:
    status.advance("a", 3)
    assert await status.wait_for(3, timeout=0.3) is False  # "b" never moved
    results = await asyncio.gather(*(status.wait_for(4, timeout=0.2) for _ in range(50)))
    assert results == [False] * 50


async def test_waiters_see_progress_made_by_another_instance(status: ProjectionStatus) -> None:
    waiter = asyncio.create_task(status.wait_for(8, timeout=30))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    # Another instance's projectors: their progress is only in Postgres.
    await status._pool.execute("UPDATE projection_checkpoints SET last_seq = 8")
    assert await asyncio.wait_for(waiter, 5) is True
    assert status.low_water == 8
