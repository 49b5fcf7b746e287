"""Rebuild and verify: the read models are a pure function of the event stream (invariant 5).

The history is written straight to the event stream (voucher and wallet events decided by the
real deciders), the live projectors apply it, then ``rebuild`` replays it into shadow tables and
swaps them in while the live projectors keep running, and ``verify`` folds the stream with the
domain code and compares. ``VL_REBUILD_EVENTS`` sets the size (200,000 for the issue's full
run; CI uses a smaller default).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from nats.aio.client import Client

from tests.conftest import HostFactory
from tests.integration.histories import ROW_KEYS, write_mixed_history
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.commands import (
    Grant,
    IssueVoucher,
    OpenOrder,
    RedeemVoucher,
    RevokeVoucher,
    SettleOrder,
)
from voucher_ledger.ledger.events import (
    CURRENT_VERSIONS,
    Actor,
    EventEnvelope,
    OrderLine,
    RecordedEvent,
    VoucherIssued,
    VoucherRedeemed,
    encode_envelope,
)
from voucher_ledger.ledger.voucher import Decided
from voucher_ledger.ledger.wallet import evolve as wallet_evolve
from voucher_ledger.ledger.wallet import handle as wallet_handle
from voucher_ledger.ledger.wallet import initial_state as wallet_initial
from voucher_ledger.projections import replay
from voucher_ledger.projections.host import ProjectorHost
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.model import StreamEvent
from voucher_ledger.projections.projector import ProjectionStatus
from voucher_ledger.projections.rebuild import Progress, rebuild
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.verify import verify

EVENTS = int(os.environ.get("VL_REBUILD_EVENTS", "12000"))
ADMIN = Actor(sub="admin", role="superadmin")
PER_CODE = 1000  # one atomic batch per code: the issue and 999 redemptions


def envelope(aggregate: str, key: str, event: Any, command_id: str) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate=aggregate,  # type: ignore[arg-type]
        aggregate_id=key,
        occurred_at=datetime.now(UTC),
        actor=ADMIN,
        command_id=command_id,
        event=event,
    )


async def write_history(store: JetStreamEventStore, spec: StreamsSpec, events: int) -> None:
    """``events`` events: vouchers with many redemptions, and wallets with orders."""
    written = 0
    n = 0
    voucher_events = events * 9 // 10
    while written < voucher_events:
        code = f"RB-{n:05d}-{uuid.uuid4().hex[:6]}".upper()
        n += 1
        batch = [
            envelope(
                "voucher",
                code,
                VoucherIssued(
                    code=code,
                    credit_baisa=5000,
                    description=f"voucher {n}",
                    active=True,
                    max_redemptions=0,
                    change="created",
                ),
                f"issue-{code}",
            )
        ]
        for i in range(max(1, min(PER_CODE, voucher_events - written)) - 1):
            batch.append(
                envelope(
                    "voucher",
                    code,
                    VoucherRedeemed(
                        code=code,
                        customer_id=f"c{i}",
                        redemption_id=f"{code}-r{i}",
                        credit_baisa=5000,
                    ),
                    f"redeem-{code}-{i}",
                )
            )
        await store.append(spec.layout.voucher_subject(code), 0, batch)
        written += len(batch)
    customer = 0
    while written < events or customer == 0:
        sub = f"customer-{customer}"
        customer += 1
        state = wallet_initial(sub)
        new: list[EventEnvelope] = []
        for k in range(20):
            order_id = f"{sub}-o{k}"
            for command in (
                OpenOrder(
                    customer_id=sub,
                    order_id=order_id,
                    tenant_id="t",
                    plan_id="p",
                    lines=[OrderLine(kind="plan", id="p", name="P", amount_baisa=3000)],
                    total_baisa=3000,
                ),
                SettleOrder(
                    customer_id=sub,
                    order_id=order_id,
                    # credit for the first ten orders; the rest await a card payment
                    grant=Grant(redemption_id=f"{sub}-g", code="FUND", amount_baisa=30_000)
                    if k == 0
                    else None,
                    payment_available=True,
                ),
            ):
                outcome = wallet_handle(state, command, f"{command.type}-{order_id}")
                assert isinstance(outcome, Decided)
                for event in outcome.events:
                    env = envelope("wallet", sub, event, f"{command.type}-{order_id}")
                    state = wallet_evolve(state, RecordedEvent(seq=len(new) + 1, envelope=env))
                    new.append(env)
        await store.append(spec.layout.wallet_subject(sub), 0, new)
        written += len(new)


async def rows(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    out = {}
    async with pool.acquire() as conn:
        for table, key in ROW_KEYS.items():
            sql = f"SELECT * FROM {table} ORDER BY {key}"  # noqa: S608 - constant names
            out[table] = [dict(r) for r in await conn.fetch(sql)]
    return out


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    # The rebuild's connection and a worker per read model, and the live projector's.
    p = await asyncpg.create_pool(database, min_size=1, max_size=len(ALL_PROJECTIONS) + 2)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


@pytest.fixture
async def live(
    nc: Client, applied: StreamsSpec, pool: asyncpg.Pool
) -> AsyncIterator[ProjectionStatus]:
    status = ProjectionStatus(pool, [p.name for p in ALL_PROJECTIONS])
    host = ProjectorHost(nc, pool, applied, status)
    await host.start()
    yield status
    await host.stop()


async def caught_up(nc: Client, spec: StreamsSpec, status: ProjectionStatus) -> int:
    head = await JetStreamEventStore(nc, spec.event_stream).last_sequence()
    assert await status.wait_for(head, timeout=300), status.applied
    return head


class Counting(Progress):
    def __init__(self, stop_after: int | None = None) -> None:
        self.total = 0
        self.done = 0
        self.stop_after = stop_after

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done

    def advance(self, events: int, total: int) -> None:
        self.done += events
        if self.stop_after is not None and self.done >= self.stop_after:
            raise KeyboardInterrupt


async def test_rebuild_equals_the_live_projection_row_for_row_and_verify_is_clean(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    pool: asyncpg.Pool,
    live: ProjectionStatus,
) -> None:
    await write_history(store, applied, EVENTS)
    head = await caught_up(nc, applied, live)
    assert head >= EVENTS
    before = await rows(pool)
    assert len(before["redemptions"]) > EVENTS // 2
    assert before["orders"]

    progress = Counting()
    summary = await rebuild(pool, nc, applied, ALL_PROJECTIONS, progress=progress)

    assert (summary.reached, summary.events, progress.done) == (head, head, head)
    assert summary.events_per_second > 0
    print(f"rebuild {summary.projection}: {summary.events_per_second:,.0f} events/s")
    assert summary.rows["redemptions"] == len(before["redemptions"])
    after = await rows(pool)
    for table in ROW_KEYS:
        assert after[table] == before[table], table
    report = await verify(pool, nc, applied)
    assert report.clean, report.differences[:20]
    assert report.checked["redemptions"] == len(before["redemptions"])


@pytest.mark.usefixtures("fast_paths_on")
async def test_the_replay_reader_takes_deliveries_off_the_parser_and_misses_none(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The replay's deliveries (batch headers and all) skip nats.py's message path; every
    event arrives once, in order, byte for byte, and the client is left as it was."""
    loops: list[Any] = []

    class Recorded(replay._ReplayPulls):
        async def start(self) -> None:
            loops.append(self)
            await super().start()

    monkeypatch.setattr(replay, "_ReplayPulls", Recorded)
    await write_history(store, applied, 2500)
    head = await store.last_sequence()
    seen: list[StreamEvent] = []
    async for events in replay.read_stream(nc, applied, 7, until_seq=head - 3, batch=400):
        assert len(events) <= 400
        seen.extend(events)
    assert [e.seq for e in seen] == list(range(7, head - 2))
    for event in seen:
        assert encode_envelope(event.envelope).decode() == event.raw
    assert len(loops) == 1
    assert loops[0].direct >= len(seen)
    assert loops[0].parsed > len(seen) // 2  # most of them straight off the parser's buffer
    assert "_process_msg" not in vars(nc)
    assert "parse" not in vars(nc._ps)
    # the client still delivers to ordinary subscriptions
    reply = await nc.request(f"$JS.API.STREAM.INFO.{applied.event_stream}", b"", timeout=5)
    assert json.loads(reply.data)["state"]["last_seq"] == head


INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
ORDER BY tablename, indexname
"""
CONSTRAINTS = """
SELECT t.relname AS table, c.conname AS name, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public'
ORDER BY t.relname, c.conname
"""


async def test_a_rebuild_of_every_event_type_in_many_batches_equals_the_live_rows(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    pool: asyncpg.Pool,
    live: ProjectionStatus,
) -> None:
    """Every event type, interleaved across vouchers and wallets, replayed in batches that cut
    through aggregates (rows created in one batch and changed in later ones): the bulk path
    leaves the live projection's rows, and the tables keep every index and constraint (the
    rebuild builds most of them after the load)."""
    await write_mixed_history(store, applied, 6000, flush_every=300)
    head = await caught_up(nc, applied, live)
    before = await rows(pool)
    types = {r["type"] for r in before["audit_log"]}
    assert types == set(CURRENT_VERSIONS), set(CURRENT_VERSIONS) - types
    statuses = {r["status"] for r in before["orders"]}
    assert statuses == {"completed", "awaiting_payment", "abandoned", "failed", "refund_due"}
    assert any(r["reversed_at"] for r in before["redemptions"])
    pairs = [(r["code"], r["customer_id"]) for r in before["redemptions"]]
    assert len(set(pairs)) < len(pairs)  # redeemed again after a reversal
    assert any(r["revoked"] for r in before["vouchers"])
    indexes = [dict(r) for r in await pool.fetch(INDEXES)]
    constraints = [dict(r) for r in await pool.fetch(CONSTRAINTS)]
    assert any("FOREIGN KEY" in c["definition"] for c in constraints)

    summary = await rebuild(pool, nc, applied, ALL_PROJECTIONS, batch=97, swap_within=400)

    assert (summary.reached, summary.events) == (head, head)
    after = await rows(pool)
    for table in ROW_KEYS:
        assert after[table] == before[table], table
    assert [dict(r) for r in await pool.fetch(INDEXES)] == indexes
    assert [dict(r) for r in await pool.fetch(CONSTRAINTS)] == constraints
    report = await verify(pool, nc, applied)
    assert report.clean, report.differences[:20]
    # the campaign reports among them: verify's fold compared every line (campaigns too),
    # credit spent, expired and taken back, discounts given
    facts = before["report_facts"]
    assert report.checked["report_facts"] == len({r["scope"] for r in facts}) >= 3
    assert any(r["spent_baisa"] for r in facts)
    assert any(r["expired_baisa"] for r in facts)
    assert any(r["granted_baisa"] < 0 for r in facts)
    assert any(r["discount_baisa"] for r in facts)
    # the global vouchers (issue #22): verify's fold compared them; shares were topped up past
    # the first allotment, asked back and given back, and one code revoked
    shares = before["global_shares"]
    assert report.checked["global_shares"] == len(shares) == 3
    assert any(r["allotted"] > 100 for r in shares)
    assert any(r["requested"] for r in shares)
    assert any(r["released"] for r in shares)
    assert [r["revoked"] for r in before["global_vouchers"]].count(True) == 1


def created(code: str) -> VoucherIssued:
    """A new code's issue event: 100 baisa, no cap."""
    return VoucherIssued(
        code=code,
        credit_baisa=100,
        description="",
        active=True,
        max_redemptions=0,
        change="created",
    )


async def assert_nothing_swapped_in(pool: asyncpg.Pool) -> None:
    """The live read models are as they were before a failed rebuild: empty, checkpoints 0."""
    assert await pool.fetchval("SELECT count(*) FROM vouchers") == 0
    checkpoints = await pool.fetch("SELECT last_seq FROM projection_checkpoints")
    assert all(r["last_seq"] == 0 for r in checkpoints)


async def test_a_duplicate_the_deferred_keys_catch_fails_the_rebuild_before_the_swap(
    applied: StreamsSpec, store: JetStreamEventStore, nc: Client, pool: asyncpg.Pool
) -> None:
    """The rebuild builds the audit trail's keys after the load: an event id recorded twice,
    in different batches, still fails the rebuild (as the live insert fails on it), and the
    live tables stay as they were."""
    await write_history(store, applied, 400)
    first = (await store.load(applied.layout.wallet_subject("customer-0")))[0].envelope
    code = "DUP-CODE"
    again = envelope("voucher", code, created(code), "issue-dup").model_copy(
        update={"event_id": first.event_id}
    )
    await store.append(applied.layout.voucher_subject(code), 0, [again])
    with pytest.raises(asyncpg.UniqueViolationError):
        await rebuild(pool, nc, applied, ALL_PROJECTIONS, batch=97, swap_within=10)
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0
    await assert_nothing_swapped_in(pool)


async def test_the_shadows_are_keyed_side_by_side_and_one_failing_keeps_the_others(
    applied: StreamsSpec, store: JetStreamEventStore, nc: Client, pool: asyncpg.Pool
) -> None:
    """The three shadows' deferred keys are built side by side, each in its own transaction:
    a customer's second active redemption of a code (in another batch: only the deferred
    unique index sees it) fails the vouchers shadow's keys and the rebuild, before the swap,
    while the audit trail's keys are built and kept (a rerun builds only what is missing)."""
    code = "TWICE-CODE"
    issued = created(code)

    def redeemed(n: int) -> EventEnvelope:
        event = VoucherRedeemed(
            code=code, customer_id="c-twice", redemption_id=f"{code}-r{n}", credit_baisa=100
        )
        return envelope("voucher", code, event, f"redeem-twice-{n}")

    subject = applied.layout.voucher_subject(code)
    await store.append(subject, 0, [envelope("voucher", code, issued, "issue-twice"), redeemed(1)])
    await write_history(store, applied, 400)
    await store.append(subject, 2, [redeemed(2)])

    with pytest.raises(asyncpg.UniqueViolationError):
        await rebuild(pool, nc, applied, ALL_PROJECTIONS, batch=97, swap_within=10)

    deferred = "SELECT count(*) FROM {}.rebuild_deferred_indexes"
    assert await pool.fetchval(deferred.format("rebuild_vouchers")) > 0  # rolled back
    assert await pool.fetchval(deferred.format("rebuild_audit")) == 0  # built, kept
    keys = await pool.fetchval(
        "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = 'rebuild_audit' AND c.conname IN ('audit_log_pkey', "
        "'audit_log_event_id_key')"
    )
    assert keys == 2
    await assert_nothing_swapped_in(pool)


async def test_the_summary_says_where_the_time_went(
    applied: StreamsSpec, store: JetStreamEventStore, nc: Client, pool: asyncpg.Pool
) -> None:
    await write_history(store, applied, 300)
    summary = await rebuild(pool, nc, applied, ALL_PROJECTIONS, batch=97, swap_within=10)
    assert list(summary.steps) == ["prepare", "replay", "keys", "swap", "drop", "count"]
    assert all(seconds >= 0 for seconds in summary.steps.values())
    assert sum(summary.steps.values()) == pytest.approx(summary.seconds, abs=0.01)


async def test_only_the_shadow_batches_commit_without_waiting_for_the_disk(
    applied: StreamsSpec, store: JetStreamEventStore, nc: Client, pool: asyncpg.Pool
) -> None:
    """A batch applied to the shadows in transactions of their own commits asynchronously (a
    crash loses it together with its shadow checkpoint); the events applied inside the swap,
    which readers see, commit synchronously."""
    seen: list[str] = []

    class Spying:
        """A read model that records the setting each of its batches is applied under."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.name, self.tables, self.keyed = inner.name, inner.tables, inner.keyed

        async def apply(self, conn: Any, events: Any) -> None:
            seen.append(await conn.fetchval("SHOW synchronous_commit"))
            await self.inner.apply(conn, events)

    spied = [Spying(p) for p in ALL_PROJECTIONS]
    await write_history(store, applied, 300)
    await rebuild(pool, nc, applied, spied, batch=97, swap_within=10)
    assert set(seen) == {"off"}
    seen.clear()
    # every event within swap_within of the head: all of them are applied inside the swap
    await rebuild(pool, nc, applied, spied, batch=97, swap_within=10**9)
    assert set(seen) == {"on"}
    assert await pool.fetchval("SHOW synchronous_commit") == "on"


async def test_rebuild_while_writes_continue_then_the_live_projector_carries_on(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    pool: asyncpg.Pool,
    live: ProjectionStatus,
    make_host: HostFactory,
    bus: CommandBus,
) -> None:
    await make_host()
    await write_history(store, applied, 3000)
    await caught_up(nc, applied, live)

    async def writes() -> None:
        for i in range(60):
            code = f"LIVE-{i}-{uuid.uuid4().hex[:4]}".upper()
            await bus.send(IssueVoucher(code=code, credit_baisa=1000), actor=ADMIN)
            await bus.send(RedeemVoucher(code=code, customer_id="x"), actor=ADMIN)
            if i % 3 == 0:
                await bus.send(RevokeVoucher(code=code), actor=ADMIN)

    writer = asyncio.create_task(writes())
    for projection in ALL_PROJECTIONS:  # one at a time here; all in one pass elsewhere
        await rebuild(pool, nc, applied, projection, batch=500, swap_within=100)
    await writer
    await caught_up(nc, applied, live)
    report = await verify(pool, nc, applied)
    assert report.clean, report.differences[:20]
    live_codes = await pool.fetchval("SELECT count(*) FROM vouchers WHERE code LIKE 'LIVE-%'")
    assert live_codes == 60


async def test_an_interrupted_rebuild_resumes_where_it_stopped(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    pool: asyncpg.Pool,
    live: ProjectionStatus,
) -> None:
    await write_history(store, applied, 5000)
    head = await caught_up(nc, applied, live)
    before = await rows(pool)
    projection = ALL_PROJECTIONS[0]
    with pytest.raises(KeyboardInterrupt):
        await rebuild(pool, nc, applied, projection, progress=Counting(stop_after=1), batch=1000)
    shadow = await pool.fetchval(
        "SELECT last_seq FROM rebuild_vouchers.projection_checkpoints WHERE projection = $1",
        projection.name,
    )
    assert 0 < shadow < head
    summary = await rebuild(pool, nc, applied, projection, batch=1000)
    assert summary.resumed_from == shadow
    assert summary.events == head - shadow
    assert await rows(pool) == before
    gone = await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'")
    assert gone == 0


async def test_verify_names_a_corrupted_row_and_the_cli_exits_1(
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
    pool: asyncpg.Pool,
    live: ProjectionStatus,
    nats_url: str,
    database: str,
) -> None:
    await write_history(store, applied, 2500)
    await caught_up(nc, applied, live)
    assert (await verify(pool, nc, applied)).clean
    code = await pool.fetchval("SELECT code FROM vouchers ORDER BY code LIMIT 1")
    victim = await pool.fetchval("SELECT redemption_id FROM redemptions ORDER BY seq DESC LIMIT 1")
    customer = await pool.fetchval("SELECT customer_id FROM wallets LIMIT 1")
    await pool.execute(
        "UPDATE vouchers SET times_redeemed = times_redeemed + 1 WHERE code = $1", code
    )
    await pool.execute("DELETE FROM redemptions WHERE redemption_id = $1", victim)
    await pool.execute(
        "UPDATE wallets SET balance_baisa = balance_baisa + 1 WHERE customer_id = $1", customer
    )

    report = await verify(pool, nc, applied)

    assert f"vouchers[{code}].times_redeemed: read model" in "\n".join(report.differences)
    assert (
        f"redemptions[{victim}]: in the stream, missing from the read model" in report.differences
    )
    assert any(d.startswith(f"wallets[{customer}].balance_baisa") for d in report.differences)
    assert len(report.differences) == 3, report.differences

    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database,
        "SUBJECT_PREFIX": applied.layout.prefix,
    }
    cli = [sys.executable, "-m", "voucher_ledger.cli"]
    result = await asyncio.to_thread(
        subprocess.run, [*cli, "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert f"DIFF vouchers[{code}].times_redeemed" in result.stdout

    # A rebuild repairs it; the CLI reports events/s and verify is clean again.
    result = await asyncio.to_thread(
        subprocess.run,
        [*cli, "rebuild", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "events/s" in result.stdout
    assert (
        "rebuilt vouchers+wallets+billing+campaigns+reports+global_vouchers+audit:" in result.stdout
    )
    result = await asyncio.to_thread(
        subprocess.run, [*cli, "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match" in result.stdout


async def test_a_rebuild_by_a_role_that_may_not_hurry_autovacuum_still_swaps(
    applied: StreamsSpec, store: JetStreamEventStore, nc: Client, database: str
) -> None:
    """The swap asks for a short ``deadlock_timeout`` (so an autovacuum worker on a table it
    moves is cancelled sooner); a role that may not set it (not a superuser, as on a managed
    PostgreSQL) gets a refusal inside the swap's transaction, which must stay usable."""
    role = f"vl_plain_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        parts = urlsplit(database)
        await admin.execute(f'GRANT CREATE ON DATABASE "{parts.path.lstrip("/")}" TO {role}')
        await admin.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        host = parts.netloc.rsplit("@", 1)[-1]  # host:port, or empty for a unix socket
        plain_url = urlunsplit(parts._replace(netloc=f"{role}@{host}"))
        pool = await asyncpg.create_pool(plain_url, min_size=1, max_size=len(ALL_PROJECTIONS) + 2)
        try:
            assert await pool.fetchval("SELECT current_setting('is_superuser')") == "off"
            async with pool.acquire() as conn:
                await migrate(conn)
            await write_history(store, applied, 600)
            head = await store.last_sequence()
            summary = await rebuild(pool, nc, applied, ALL_PROJECTIONS, batch=200)
            assert (summary.reached, summary.events) == (head, head)
            report = await verify(pool, nc, applied)
            assert report.clean, report.differences[:20]
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
