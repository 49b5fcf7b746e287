"""The public paths behind the fences, over a real nats-server: with the fast paths switched off
(the setting, or the environment) or nats.py's internals not as expected, no hook is put on the
client and the bus, the pull loop, ``write_now`` and the replay reader still do their work; a
direct handler or the replay's parser hook that fails hands its message to nats.py."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.conftest import HostFactory, connect, wait_until
from tests.integration.histories import write_mixed_history
from tests.unit.test_fastpaths import (
    _client_without_pending_size,
    _msg_without_client,
    _parse_with_another_parameter,
    _renamed_process_msg,
    fence_warnings,
)
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream import fastpaths
from voucher_ledger.jetstream.direct import DirectDispatch, write_now
from voucher_ledger.jetstream.pulls import PullLoop, stream_sequence
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher
from voucher_ledger.projections import replay

ADMIN = Actor(sub="admin-1", role="superadmin")
CUSTOMER = Actor(sub="checkout", role="service")

Simulate = Callable[[pytest.MonkeyPatch], None]


@pytest.fixture(autouse=True)
def fresh_fences(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(fastpaths, "_switch", True)
    for fence in fastpaths.FENCES:
        fence.reset()
    yield
    for fence in fastpaths.FENCES:
        fence.reset()


def switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpaths, "_switch", False)


def environment_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """As CI's second run: FAST_PATHS=false in the environment, nobody calls configure."""
    monkeypatch.setattr(fastpaths, "_switch", None)
    monkeypatch.setenv("FAST_PATHS", "false")


# ---------------------------------------------------------------------------------- the bus


async def _bus_round(nc: Client, applied: StreamsSpec, code: str) -> None:
    bus = CommandBus(nc, applied.layout, applied.command_stream)
    await bus.start()
    try:
        assert "_process_msg" not in vars(nc), "no hook: the bus receives through its callback"
        issued = await bus.send(
            IssueVoucher(code=code, credit_baisa=700, max_redemptions=1, active=True),
            actor=ADMIN,
            timeout=30,
        )
        assert isinstance(issued, Accepted), issued
        first = await bus.send(RedeemVoucher(code=code, customer_id="c-1"), actor=CUSTOMER)
        assert isinstance(first, Accepted), first
        assert first.redemption is not None
        assert first.redemption.credit_baisa == 700
        second = await bus.send(RedeemVoucher(code=code, customer_id="c-2"), actor=CUSTOMER)
        assert isinstance(second, Rejected), second
        assert second.reason == "cap_reached"
        assert "_process_msg" not in vars(nc)
        assert DirectDispatch.of(nc).taken == 0
    finally:
        await bus.close()


@pytest.mark.parametrize("off", [switch_off, environment_off, _renamed_process_msg])
async def test_the_bus_and_the_processors_work_on_nats_py_callbacks(
    off: Simulate,
    nc: Client,
    applied: StreamsSpec,
    make_host: HostFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    off(monkeypatch)
    assert not fastpaths.DIRECT.allowed()
    host = await make_host(instance_id="p1")
    await _bus_round(nc, applied, f"FENCED{off.__name__.upper()[:8]}")
    # the processors' own client (found by type, not by attribute name): no hook either
    (host_client,) = [v for v in vars(host).values() if isinstance(v, Client)]
    assert "_process_msg" not in vars(host_client)
    expected = 1 if off is _renamed_process_msg else 0
    assert len(fence_warnings(caplog)) == expected


# ---------------------------------------------------------------------------- the pull loop


@pytest.fixture
async def pull_stream(nc: Client, prefix: str) -> AsyncIterator[tuple[str, str, str]]:
    stream, durable, subject = f"{prefix.upper()}_FENCED", "WORKER", f"{prefix}.fenced"
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


@pytest.mark.parametrize("off", [switch_off, _msg_without_client, _renamed_process_msg])
async def test_the_pull_loop_delivers_ordinary_messages(
    off: Simulate,
    nc: Client,
    pull_stream: tuple[str, str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, durable, subject = pull_stream
    js = nc.jetstream()
    total = 300
    for i in range(total):
        await js.publish(f"{subject}.{i % 3}", str(i).encode(), headers={"Tag": str(i)})
    off(monkeypatch)
    pulls = PullLoop(nc, stream, durable, batch=50, expires=0.5)
    await pulls.start()
    seen: list[int] = []
    try:
        assert "_process_msg" not in vars(nc)
        while len(seen) < total:
            msgs = await pulls.next(timeout=5.0)
            assert msgs, f"stalled after {len(seen)} messages"
            for msg in msgs:
                assert type(msg) is Msg
                assert msg.subject.startswith(subject)  # nats.py's own message, all of it
                assert msg.headers is not None
                assert msg.headers["Tag"] == msg.data.decode()
                seen.append(stream_sequence(msg))
                await msg.ack()
    finally:
        await pulls.stop()
    assert seen == list(range(1, total + 1))
    assert DirectDispatch.of(nc).taken == 0


# ------------------------------------------------------------------------------- write_now


@pytest.mark.parametrize("off", [switch_off, _client_without_pending_size])
async def test_write_now_leaves_the_writing_to_nats_py_and_nothing_is_lost(
    off: Simulate, nc: Client, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        off(m)
        assert not fastpaths.WRITE_NOW.allowed()  # checked on a fresh client
    if off is switch_off:
        switch_off(monkeypatch)
    other = await connect(nats_url)
    got: list[bytes] = []
    try:

        async def received(msg: Msg) -> None:
            got.append(msg.data)

        sub = await other.subscribe("fenced-write-now.test", cb=received)
        await other.flush()
        left = 0  # publishes whose buffered bytes write_now left to nats.py's flusher
        for i in range(30):
            await nc.publish("fenced-write-now.test", str(i).encode())
            buffered = list(nc._pending)
            write_now(nc)  # synchronous: nothing else runs in between
            assert nc._pending == buffered
            left += bool(buffered)
        assert left > 0
        await nc.flush()
        await wait_until(lambda: len(got) >= 30, 20, "every message")
        assert got == [str(i).encode() for i in range(30)]
        await sub.unsubscribe()
    finally:
        await other.close()


# -------------------------------------------------------------------------- the replay reader


@pytest.fixture
def recorded_loops(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    loops: list[Any] = []

    class Recorded(replay._ReplayPulls):
        async def start(self) -> None:
            loops.append(self)
            await super().start()
            self.parse_hooked = "parse" in vars(self._nc._ps)
            self.direct_hooked = "_process_msg" in vars(self._nc)

    monkeypatch.setattr(replay, "_ReplayPulls", Recorded)
    return loops


async def _read_all(nc: Client, applied: StreamsSpec, head: int) -> list[tuple[int, bytes]]:
    seen: list[tuple[int, bytes]] = []
    async for batch in replay.read_events(
        nc, applied, 1, until_seq=head, batch=250, make=lambda seq, body: (seq, body)
    ):
        seen.extend(batch)
    return seen


async def _expected(nc: Client, applied: StreamsSpec, head: int) -> list[tuple[int, bytes]]:
    """The same events read with every fast path on (the reference)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fastpaths, "_switch", True)
        return await _read_all(nc, applied, head)


@pytest.mark.parametrize("off", [switch_off, _parse_with_another_parameter])
async def test_the_replay_reads_every_event_through_the_pull_loop(
    off: Simulate,
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    recorded_loops: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await write_mixed_history(store, applied, 1200, flush_every=300)
    head = await store.last_sequence()
    expected = await _expected(nc, applied, head)
    assert [seq for seq, _ in expected] == list(range(1, head + 1))
    off(monkeypatch)
    for fence in fastpaths.FENCES:  # as in a process that started with this nats.py
        fence.reset()
    seen = await _read_all(nc, applied, head)
    assert seen == expected
    loop = recorded_loops[-1]
    assert not loop.parse_hooked
    assert loop.parsed == 0
    if off is switch_off:
        assert not loop.direct_hooked
        assert loop.direct == 0
    else:  # only the parser hook is refused; the direct handler still takes deliveries
        assert loop.direct == len(seen)
        assert len(fence_warnings(caplog)) == 1
    assert "parse" not in vars(nc._ps)
    assert "_process_msg" not in vars(nc)


# ------------------------------------------------------------- a failure inside a fast path


async def test_a_failing_direct_handler_hands_the_message_to_nats_py(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []

    async def received(msg: Msg) -> None:
        got.append(msg.data)

    def broken(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        raise RuntimeError("a bug in a direct handler")

    sub = await nc.subscribe("fenced.broken", cb=received)
    dispatch = DirectDispatch.of(nc)
    assert dispatch.add(sub, broken)
    try:
        for i in range(3):
            await nc.publish("fenced.broken", str(i).encode())
        await nc.flush()
        await wait_until(lambda: len(got) >= 3, 5, "the callback gets every message")
        assert got == [b"0", b"1", b"2"]
        assert dispatch.taken == 0
    finally:
        dispatch.remove(sub)
        await sub.unsubscribe()
    assert sum("direct handler" in r.getMessage() for r in caplog.records) == 3


async def test_a_failing_replay_parser_hook_hands_the_rest_to_nats_py(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    recorded_loops: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await write_mixed_history(store, applied, 1200, flush_every=300)
    head = await store.last_sequence()
    expected = await _expected(nc, applied, head)
    ack_sequence = replay._ack_sequence
    failures = 0

    def sometimes_failing(reply: bytes) -> int | None:
        nonlocal failures
        if failures < 3 and sys._getframe(1).f_code.co_name == "_parse":  # the parser hook's
            failures += 1
            raise ValueError("a bug in the replay's parsing")
        return ack_sequence(reply)

    monkeypatch.setattr(replay, "_ack_sequence", sometimes_failing)
    seen = await asyncio.wait_for(_read_all(nc, applied, head), 60)
    assert seen == expected  # every event once, in order
    assert failures == 3
    assert recorded_loops[-1].parse_hooked
    assert "parse" not in vars(nc._ps)
    assert any("parser hook failed" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    logging.getLogger(__name__).info("read %d events past 3 failures", len(seen))
