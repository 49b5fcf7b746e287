"""Projections over a real stream and a real Postgres: idempotent batches, crash and resume,
read models equal to an independent fold of the stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client

from tests.conftest import HostFactory, wait_until
from tests.integration.histories import ROW_KEYS, write_mixed_history
from tests.integration.statement_oracle import ORACLES
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.api import js_api
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.commands import (
    IssueVoucher,
    RedeemVoucher,
    ReverseRedemption,
    RevokeVoucher,
)
from voucher_ledger.ledger.events import CURRENT_VERSIONS, Actor, decode_envelope
from voucher_ledger.ledger.voucher import VoucherState, fold
from voucher_ledger.projections.audit import AuditProjection
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.model import Conn, PlainEvent, StreamEvent, plain_event
from voucher_ledger.projections.projector import ProjectionStatus, Projector
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.vouchers import VoucherProjection

ADMIN = Actor(sub="admin", role="superadmin")


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database, min_size=1, max_size=4)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


async def make_history(bus: CommandBus) -> list[str]:
    """Issue, redeem, reverse, revoke and restore across several codes."""
    codes = [f"PROJ-{i}" for i in range(6)]
    for i, code in enumerate(codes):
        await bus.send(
            IssueVoucher(code=code, credit_baisa=1000 * (i + 1), max_redemptions=40), actor=ADMIN
        )
    await asyncio.gather(
        *(
            bus.send(RedeemVoucher(code=code, customer_id=f"c{n}"), actor=ADMIN)
            for code in codes
            for n in range(50)
        )
    )
    for n in range(5):
        await bus.send(ReverseRedemption(code="PROJ-0", customer_id=f"c{n}"), actor=ADMIN)
    await bus.send(RevokeVoucher(code="PROJ-1"), actor=ADMIN)
    await bus.send(RevokeVoucher(code="PROJ-2"), actor=ADMIN)
    await bus.send(IssueVoucher(code="PROJ-2", credit_baisa=9000, active=False), actor=ADMIN)
    await bus.send(RedeemVoucher(code="PROJ-0", customer_id="late"), actor=ADMIN)
    return codes


async def stream_events(nc: Client, spec: StreamsSpec) -> list[StreamEvent]:
    js = nc.jetstream()
    sub = await js.subscribe(spec.layout.events_wildcard, ordered_consumer=True)
    out: list[StreamEvent] = []
    head = await JetStreamEventStore(nc, spec.event_stream).last_sequence()
    while not out or out[-1].seq < head:
        msg = await sub.next_msg(timeout=5)
        out.append(
            StreamEvent(
                seq=int(msg.metadata.sequence.stream),
                envelope=decode_envelope(msg.data),
                raw=msg.data.decode(),
            )
        )
    await sub.unsubscribe()
    return out


def batch(projector: Projector, events: Sequence[StreamEvent]) -> list[Any]:
    """``events`` as ``projector`` decodes them off the stream (plain dicts on the bulk path)."""
    return [projector.decode(e.seq, e.raw.encode()) for e in events]


def independent_fold(events: Sequence[StreamEvent]) -> dict[str, VoucherState]:
    """The decider's own fold: no projector code involved."""
    from voucher_ledger.ledger.events import RecordedEvent

    by_code: dict[str, list[RecordedEvent]] = {}
    for e in events:
        by_code.setdefault(e.envelope.aggregate_id, []).append(
            RecordedEvent(seq=e.seq, envelope=e.envelope)
        )
    return {code: fold(code, history) for code, history in by_code.items()}


async def assert_rows_equal_fold(pool: asyncpg.Pool, events: Sequence[StreamEvent]) -> None:
    states = independent_fold(events)
    rows = {r["code"]: dict(r) for r in await pool.fetch("SELECT * FROM vouchers")}
    assert set(rows) == set(states)
    for code, state in states.items():
        row = rows[code]
        assert (
            row["credit_baisa"],
            row["description"],
            row["active"],
            row["revoked"],
            row["max_redemptions"],
            row["times_redeemed"],
            row["created_at"],
            row["updated_at"],
            row["last_seq"],
        ) == (
            state.credit_baisa,
            state.description,
            state.active,
            state.revoked,
            state.max_redemptions,
            state.times_redeemed,
            state.created_at,
            state.updated_at,
            state.last_seq,
        ), code
        active = {
            r["customer_id"]: r["redemption_id"]
            for r in await pool.fetch(
                "SELECT customer_id, redemption_id FROM redemptions "
                "WHERE code = $1 AND reversed_at IS NULL",
                code,
            )
        }
        assert active == {c: red.redemption_id for c, red in state.redemptions.items()}, code
    audit = await pool.fetch("SELECT seq, event FROM audit_log ORDER BY seq")
    assert [r["seq"] for r in audit] == [e.seq for e in events]
    assert [json.loads(r["event"]) for r in audit] == [json.loads(e.raw) for e in events]


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {
        t: int(await pool.fetchval(f"SELECT count(*) FROM {t}"))  # noqa: S608 - fixed names
        for t in ("vouchers", "redemptions", "audit_log")
    }


async def test_redelivered_batch_adds_no_rows(
    make_host: HostFactory, bus: CommandBus, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    await make_host()
    await make_history(bus)
    events = await stream_events(nc, applied)
    status = ProjectionStatus(pool, ["vouchers", "audit"])
    projectors = [
        Projector(nc, pool, applied, VoucherProjection(), status),
        Projector(nc, pool, applied, AuditProjection(), status),
    ]
    for projector in projectors:
        await projector.checkpoint()
        half = len(events) // 2
        assert await projector.apply(batch(projector, events[:half])) == events[half - 1].seq
        assert await projector.apply(batch(projector, events)) == events[-1].seq
    before = await counts(pool)
    for projector in projectors:
        # The same batch again, and an overlapping one: both fully at or below the checkpoint.
        assert await projector.apply(batch(projector, events)) == events[-1].seq
        assert await projector.apply(batch(projector, events[10:20])) == events[-1].seq
    assert await counts(pool) == before
    await assert_rows_equal_fold(pool, events)


class _Crashing:
    """A projection that dies after writing part of a batch, as a SIGKILL mid-transaction."""

    def __init__(self, inner: VoucherProjection, after: int) -> None:
        self.inner = inner
        self.after = after
        self.name = inner.name
        self.tables = inner.tables

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        await self.inner.apply(conn, events[: self.after])
        raise ConnectionResetError("killed mid-batch")


async def test_projector_killed_mid_batch_resumes_and_equals_a_fresh_fold(
    make_host: HostFactory, bus: CommandBus, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    await make_host()
    await make_history(bus)
    events = await stream_events(nc, applied)
    status = ProjectionStatus(pool, ["vouchers"])
    first = Projector(nc, pool, applied, VoucherProjection(), status, batch=64)
    await first.checkpoint()
    assert await first.apply(batch(first, events[:100])) == events[99].seq

    crashing = Projector(nc, pool, applied, _Crashing(VoucherProjection(), 30), status)  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        await crashing.apply(batch(crashing, events[100:]))
    # Nothing of the failed batch is visible: the checkpoint and the rows moved together.
    assert await first.checkpoint() == events[99].seq
    assert await pool.fetchval("SELECT max(seq) FROM redemptions") <= events[99].seq

    # A fresh projector (new process) consumes the stream from its Postgres checkpoint.
    resumed = Projector(nc, pool, applied, VoucherProjection(), status, batch=64)
    task = asyncio.create_task(resumed.run())
    try:
        await wait_until(
            lambda: status.applied["vouchers"] >= events[-1].seq, what="projector caught up"
        )
    finally:
        resumed.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Audit is not part of this projector; project it to compare everything at once.
    audit = Projector(nc, pool, applied, AuditProjection(), status)
    await audit.checkpoint()
    await audit.apply(batch(audit, events))
    await assert_rows_equal_fold(pool, events)


async def test_live_projectors_via_consumer_keep_up_with_a_storm(
    make_host: HostFactory, bus: CommandBus, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    from voucher_ledger.projections.host import ProjectorHost

    await make_host()
    status = ProjectionStatus(pool, ["vouchers", "audit"])
    host = ProjectorHost(nc, pool, applied, status)
    await host.start()
    try:
        await make_history(bus)
        head = await JetStreamEventStore(nc, applied.event_stream).last_sequence()
        assert await status.wait_for(head, timeout=30)
    finally:
        await host.stop()
    await assert_rows_equal_fold(pool, await stream_events(nc, applied))


async def test_a_projector_that_keeps_failing_is_reported_until_a_batch_applies(
    make_host: HostFactory, bus: CommandBus, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    """/readyz reads ``status.failing``: set while the projector cannot apply, cleared after."""
    await make_host()
    await bus.send(IssueVoucher(code="POISON-1", credit_baisa=1000), actor=ADMIN)
    status = ProjectionStatus(pool, ["vouchers"])
    broken = Projector(nc, pool, applied, _Crashing(VoucherProjection(), 0), status)  # type: ignore[arg-type]
    task = asyncio.create_task(broken.run())
    try:
        await wait_until(lambda: "vouchers" in status.failing, what="failure reported")
        assert status.failing["vouchers"] == "ConnectionResetError"
        assert status.applied["vouchers"] == 0
    finally:
        broken.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    healthy = Projector(nc, pool, applied, VoucherProjection(), status)
    task = asyncio.create_task(healthy.run())
    try:
        await wait_until(lambda: status.applied["vouchers"] >= 1, what="caught up")
        assert status.failing == {}
    finally:
        healthy.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_one_projector_applies_every_read_model_each_from_its_own_checkpoint(
    make_host: HostFactory, bus: CommandBus, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    """The deployed layout: one consumer, one transaction per batch for all read models. The
    read models may stand at different checkpoints (one was rebuilt alone, or a single-model
    projector ran ahead); each gets exactly the events above its own checkpoint."""
    await make_host()
    await make_history(bus)
    events = await stream_events(nc, applied)
    status = ProjectionStatus(pool, ["vouchers", "audit"])
    ahead = Projector(nc, pool, applied, AuditProjection(), status)
    await ahead.checkpoint()
    assert await ahead.apply(batch(ahead, events[:120])) == events[119].seq

    both = Projector(nc, pool, applied, [VoucherProjection(), AuditProjection()], status)
    assert both.name == "read_models"
    assert await both.checkpoint() == 0  # the lowest of the two: where its consumer starts
    # A batch that reaches past the audit checkpoint: vouchers from 1, audit from 121 only.
    assert await both.apply(batch(both, events[:200])) == events[199].seq
    assert status.applied == {"vouchers": events[199].seq, "audit": events[199].seq}
    # A crash mid-batch rolls back every read model and every checkpoint together.
    crashing = Projector(
        nc,
        pool,
        applied,
        [_Crashing(VoucherProjection(), 30), AuditProjection()],  # type: ignore[list-item]
        status,
    )
    with pytest.raises(ConnectionResetError):
        await crashing.apply(batch(crashing, events[200:]))
    assert await both.checkpoint() == events[199].seq
    assert await pool.fetchval("SELECT max(seq) FROM audit_log") == events[199].seq
    # The live loop resumes from the checkpoints and catches up with the stream.
    task = asyncio.create_task(both.run())
    try:
        await wait_until(lambda: status.low_water >= events[-1].seq, what="caught up")
    finally:
        both.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await assert_rows_equal_fold(pool, events)


async def every_row(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    return {
        table: [
            dict(r)
            for r in await pool.fetch(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608
        ]
        for table, key in ROW_KEYS.items()
    }


async def test_the_live_bulk_path_leaves_the_rows_of_the_projections_statements(
    store: JetStreamEventStore, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    """The deployed projector decodes plain dicts and applies the read models' appliers (the
    rebuild's too); batches of any size, cutting through aggregates, and re-deliveries leave
    exactly the rows that one statement per event leaves (``statement_oracle.py``, on the
    decoded models), for every event type."""
    await write_mixed_history(store, applied, 3000, flush_every=300)
    events = await stream_events(nc, applied)
    status = ProjectionStatus(pool, [p.name for p in ALL_PROJECTIONS])
    statements = Projector(nc, pool, applied, ORACLES, status)
    await statements.checkpoint()
    for start in range(0, len(events), 37):
        await statements.apply(batch(statements, events[start : start + 37]))
    expected = await every_row(pool)
    assert {r["type"] for r in expected["audit_log"]} == set(CURRENT_VERSIONS)

    await pool.execute(f"TRUNCATE {', '.join(ROW_KEYS)}")
    await pool.execute("UPDATE projection_checkpoints SET last_seq = 0")
    live = Projector(nc, pool, applied, ALL_PROJECTIONS, status)
    assert live.decode is plain_event
    start, sizes = 0, itertools.cycle((1, 7, 64, 500, 3, 200))
    while start < len(events):
        end = start + next(sizes)
        assert await live.apply(batch(live, events[start:end])) == events[:end][-1].seq
        # a re-delivery of an overlapping batch adds nothing
        await live.apply(batch(live, events[max(0, start - 5) : end]))
        start = end
    assert await every_row(pool) == expected


CODE_RULE = re.compile(r"[A-Z0-9][A-Z0-9_-]{2,63}")  # ledger/codes.py, the old CHECK's regex
CODE_CANDIDATES = [
    "AB",
    "ABC",
    "A" * 64,
    "A" * 65,
    "A" + "-" * 63,
    "A" + "_" * 64,
    "0__",
    "abc",
    "aBC",
    "-AB",
    "_AB",
    "A-B_C",
    "ABC\n",
    "ABC ",
    " ABC",
    "A.B",
    "ÀBC",
    "AB" + "É" * 10,
    "Z9-_Z9",
]


async def test_the_voucher_code_check_takes_exactly_the_codes_the_rule_allows(
    pool: asyncpg.Pool,
) -> None:
    """The vouchers table's CHECK (migration 0003, without the regex engine's costly bounded
    repetition) accepts a code exactly when ``^[A-Z0-9][A-Z0-9_-]{2,63}$`` matches it, as the
    CHECK of migration 0001 did."""
    old = "^[A-Z0-9][A-Z0-9_-]{2,63}$"
    async with pool.acquire() as conn:
        for code in CODE_CANDIDATES:
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO vouchers (code, credit_baisa, description, active, "
                        "max_redemptions, created_at, updated_at, last_seq) "
                        "VALUES ($1, 1, '', true, 0, now(), now(), 1)",
                        code,
                    )
                    raise _RolledBack
            except asyncpg.CheckViolationError:
                accepted = False
            except _RolledBack:
                accepted = True
            expected = CODE_RULE.fullmatch(code) is not None
            assert accepted == expected, code
            assert await conn.fetchval("SELECT $1::text ~ $2", code, old) == expected, code


class _RolledBack(Exception):
    pass


async def test_the_running_projector_acknowledges_what_it_applied_once_the_stream_is_quiet(
    make_host: HostFactory, bus: CommandBus, nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> None:
    """The run loop acknowledges every 250 ms, not after every batch (issue #19), and at once
    when the stream goes quiet: after catching up, its consumer holds nothing unacknowledged
    (else it would deliver it all again after its ack_wait, and stop at max_ack_pending)."""
    await make_host()
    await make_history(bus)
    events = await stream_events(nc, applied)
    status = ProjectionStatus(pool, ["vouchers"])
    projector = Projector(nc, pool, applied, VoucherProjection(), status, batch=16)
    task = asyncio.create_task(projector.run())

    async def nothing_to_ack() -> bool:
        info = await js_api(nc, f"CONSUMER.INFO.{applied.event_stream}.{projector.durable}")
        return int(info["num_ack_pending"]) == 0

    try:
        await wait_until(
            lambda: status.applied["vouchers"] >= events[-1].seq, what="projector caught up"
        )
        assert projector.batches > 1  # many batches, fewer acknowledgements
        await wait_until(nothing_to_ack, timeout=5, what="nothing left to acknowledge")
    finally:
        projector.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
