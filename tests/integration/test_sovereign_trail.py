"""The hub's read model of its Sovereigns' trail, its report and ``verify`` at a hub, on one
real nats-server and a real PostgreSQL.

No leaf link here: the test's own stream, named like the hub's trail (``<PREFIX>_SOVEREIGNS``),
takes envelopes published straight onto ``<prefix>.sovereign.<name>.events.voucher.<CODE>``,
as the hub's sourcing would store them; the hub's own global events go on its event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client

from tests.conftest import wait_until
from voucher_ledger.config.settings import Settings
from voucher_ledger.http import keys
from voucher_ledger.http.app import create_app
from voucher_ledger.http.auth import Authenticator, mint_token
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    GlobalIssued,
    GlobalShareAllotted,
    RedemptionReversed,
    ShareReceived,
    ShareReleased,
    VoucherRedeemed,
    encode_envelope,
)
from voucher_ledger.projections import sovereign_trail
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.trail_fold import report_lines
from voucher_ledger.projections.verify import verify

ACTOR = Actor(sub="tester", role="service")
HUB = Actor(sub="hub", role="system")


def envelope(code: str, event: Any, aggregate: str = "voucher") -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate=aggregate,  # type: ignore[arg-type]
        aggregate_id=code,
        occurred_at=datetime.now(UTC),
        actor=ACTOR if aggregate == "voucher" else HUB,
        command_id=f"c-{uuid.uuid4().hex[:8]}",
        event=event,
    )


def redeemed(code: str, rid: str, credit: int = 5000) -> EventEnvelope:
    return envelope(
        code,
        VoucherRedeemed(
            code=code,
            customer_id=f"org-{rid}",
            redemption_id=rid,
            credit_baisa=credit,
            user_id=f"user-{rid}",
        ),
    )


def reversed_(code: str, rid: str) -> EventEnvelope:
    return envelope(
        code,
        RedemptionReversed(code=code, customer_id=f"org-{rid}", redemption_id=rid, reason="test"),
    )


def received(code: str, allotted: int = 1) -> EventEnvelope:
    """The Sovereign took its share of the global ``code`` (from here on the code is global
    there)."""
    share = ShareReceived(
        code=code, allotted_total=allotted, requested_total=0, pool_empty=False, hub_seq=1
    )
    return envelope(code, share)


class Trail:
    """The test's trail stream and what it publishes onto it."""

    def __init__(self, nc: Client, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self.stream = sovereign_trail.trail_stream(prefix)
        self.seq = 0

    async def publish(self, sovereign: str, env: EventEnvelope) -> int:
        subject = f"{self.prefix}.sovereign.{sovereign}.events.voucher.{env.aggregate_id}"
        ack = await self.nc.jetstream().publish(subject, encode_envelope(env), stream=self.stream)
        self.seq = ack.seq
        return int(ack.seq)


@pytest.fixture
async def trail(nc: Client, applied: StreamsSpec, prefix: str) -> AsyncIterator[Trail]:
    t = Trail(nc, prefix)
    config = {"name": t.stream, "subjects": [f"{prefix}.sovereign.>"], "storage": "file"}
    await nc.request(f"$JS.API.STREAM.CREATE.{t.stream}", json.dumps(config).encode(), timeout=5)
    yield t
    await nc.request(f"$JS.API.STREAM.DELETE.{t.stream}", b"", timeout=5)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database, min_size=1, max_size=4)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


@contextlib.asynccontextmanager
async def running(nc: Client, pool: asyncpg.Pool, prefix: str) -> AsyncIterator[Any]:
    projector = sovereign_trail.TrailProjector(nc, pool, prefix, batch=3)
    task = asyncio.create_task(projector.run())
    try:
        yield projector
    finally:
        projector.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def caught_up(projector: sovereign_trail.TrailProjector, seq: int) -> None:
    async def reached() -> bool:
        return await projector.checkpoint() >= seq

    await wait_until(reached, timeout=20)


async def table(pool: asyncpg.Pool) -> dict[tuple[str, str], dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM sovereign_redemptions")
    return {(r["sovereign"], r["redemption_id"]): dict(r) for r in rows}


async def publish_history(trail: Trail) -> None:
    """north: WELCOME redeemed by a, b, c (b reversed); south: WELCOME by d, OTHER by e; an
    event of no interest in between (a share received) and one reversal of nothing."""
    await trail.publish("north", redeemed("WELCOME", "a"))
    await trail.publish("north", redeemed("WELCOME", "b"))
    await trail.publish(
        "south",
        envelope(
            "WELCOME",
            ShareReceived(
                code="WELCOME", allotted_total=5, requested_total=0, pool_empty=False, hub_seq=3
            ),
        ),
    )
    await trail.publish("south", redeemed("WELCOME", "d", 7000))
    await trail.publish("north", reversed_("WELCOME", "b"))
    await trail.publish("north", redeemed("WELCOME", "c"))
    await trail.publish("south", redeemed("OTHER", "e", 1000))
    await trail.publish("south", reversed_("OTHER", "nobody"))


async def test_projector_applies_the_trail_once_and_the_report_sums_it(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str
) -> None:
    await publish_history(trail)
    async with running(nc, pool, prefix) as projector:
        await caught_up(projector, trail.seq)
        rows = await table(pool)
        assert sorted(rows) == [
            ("north", "a"),
            ("north", "b"),
            ("north", "c"),
            ("south", "d"),
            ("south", "e"),
        ]
        assert rows[("north", "b")]["reversed_trail_seq"] == 5
        assert rows[("north", "b")]["reversed_at"] is not None
        assert rows[("north", "a")]["reversed_at"] is None
        assert rows[("south", "d")]["trail_seq"] == 4
        assert rows[("south", "d")]["user_id"] == "user-d"
        status = {
            r["sovereign"]: (r["last_seq"], r["events"])
            for r in await pool.fetch("SELECT * FROM sovereign_trail_status")
        }
        assert status == {"north": (6, 4), "south": (8, 4)}

        # Later events carry on from the checkpoint (batches of 3: several batches).
        await trail.publish("north", reversed_("WELCOME", "a"))
        await caught_up(projector, trail.seq)
        assert (await table(pool))[("north", "a")]["reversed_trail_seq"] == trail.seq

    lines, totals = report_lines(await sovereign_trail.report_figures(pool), ["east"])
    assert [(x.sovereign, x.code, x.redemptions, x.reversed, x.credit_baisa) for x in lines] == [
        ("north", "WELCOME", 1, 2, 5000),
        ("south", "OTHER", 1, 0, 1000),
        ("south", "WELCOME", 1, 0, 7000),
    ]
    assert [(x.sovereign, x.redemptions, x.reversed, x.credit_baisa) for x in totals] == [
        ("east", 0, 0, 0),
        ("north", 1, 2, 5000),
        ("south", 2, 0, 8000),
    ]
    only = await sovereign_trail.report_figures(pool, ["OTHER"])
    assert list(only) == [("south", "OTHER")]


async def test_redelivery_after_a_crash_counts_nothing_twice(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str
) -> None:
    await publish_history(trail)
    events = []
    async for batch in sovereign_trail.read_trail(nc, prefix, trail.seq):
        events.extend(batch)
    async with pool.acquire() as conn:
        assert await sovereign_trail.apply_batch(conn, events[:5]) == 5
        before = await table(pool)
        # The consumer redelivers from an older position (its ack was lost in the crash).
        assert await sovereign_trail.apply_batch(conn, events[2:5]) == 5
        assert await table(pool) == before
        # A batch that would skip an event is refused, and changes nothing.
        with pytest.raises(sovereign_trail.TrailGap):
            await sovereign_trail.apply_batch(conn, events[6:])
        assert await table(pool) == before
        assert await sovereign_trail.apply_batch(conn, events[3:]) == 8
    counts = await pool.fetchrow(
        "SELECT count(*) AS n, count(reversed_at) AS r FROM sovereign_redemptions"
    )
    assert (counts["n"], counts["r"]) == (5, 1)
    # A projector started now (the checkpoint at the head) applies nothing again.
    async with running(nc, pool, prefix) as projector:
        await trail.publish("south", redeemed("OTHER", "f"))
        await caught_up(projector, trail.seq)
    assert len(await table(pool)) == 6


async def test_rebuild_replays_the_trail_into_the_same_rows(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str
) -> None:
    await publish_history(trail)
    async with running(nc, pool, prefix) as projector:
        await caught_up(projector, trail.seq)
    live = await table(pool)
    status = await pool.fetch("SELECT sovereign, last_seq, events FROM sovereign_trail_status")
    await pool.execute("UPDATE sovereign_redemptions SET credit_baisa = 1 WHERE code = 'OTHER'")
    done = await sovereign_trail.rebuild_trail(pool, nc, prefix)
    assert (done.reached, done.rows) == (trail.seq, 5)
    assert await table(pool) == live
    after = await pool.fetch("SELECT sovereign, last_seq, events FROM sovereign_trail_status")
    assert sorted(map(tuple, after)) == sorted(map(tuple, status))


async def hub_global(
    nc: Client, spec: StreamsSpec, code: str, cap: int, allotted: dict[str, int]
) -> None:
    """The hub's own events of a global code: issued with ``cap``, then allotments."""
    subject = spec.layout.global_subject(code)
    js = nc.jetstream()
    issued = GlobalIssued(
        code=code,
        credit_baisa=5000,
        description="global",
        max_redemptions=cap,
        sovereigns=sorted(allotted),
    )
    await js.publish(subject, encode_envelope(envelope(code, issued, "global")))
    pool = cap
    for name, slots in sorted(allotted.items()):
        pool -= slots
        share = GlobalShareAllotted(
            code=code, sovereign=name, slots=slots, allotted_total=slots, pool=pool
        )
        await js.publish(subject, encode_envelope(envelope(code, share, "global")))


async def test_verify_at_the_hub_passes_then_fails_on_a_tampered_row(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str, applied: StreamsSpec
) -> None:
    await hub_global(nc, applied, "WELCOME", cap=10, allotted={"north": 3, "south": 3})
    await publish_history(trail)
    async with running(nc, pool, prefix) as projector:
        await caught_up(projector, trail.seq)
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert report.differences == []
    assert report.trail == (trail.seq, trail.seq)
    assert report.checked["sovereign_redemptions"] == 5
    assert report.checked["global codes' shares"] == 1

    await pool.execute(
        "UPDATE sovereign_redemptions SET reversed_at = NULL, reversed_trail_seq = NULL "
        "WHERE redemption_id = 'b'"
    )
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert not report.clean
    assert "sovereign_redemptions[north/b].reversed_trail_seq: read model None, stream 5" in (
        report.differences
    )
    assert any(
        d.startswith("sovereign_report[north/WELCOME].redemptions") for d in report.differences
    )

    await pool.execute("DELETE FROM sovereign_redemptions WHERE redemption_id = 'e'")
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert "sovereign_redemptions[south/e]: in the stream, missing from the read model" in (
        report.differences
    )


async def test_verify_fails_when_a_sovereign_redeems_beyond_its_share(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str, applied: StreamsSpec
) -> None:
    # north holds 2 slots of WELCOME; south 3 (cap 5). north redeems twice, releases one slot
    # (unused: after a reversal), then redeems twice more: 3 standing > 2 allotted - 1 released.
    await hub_global(nc, applied, "WELCOME", cap=5, allotted={"north": 2, "south": 3})
    await trail.publish("north", received("WELCOME", 2))
    await trail.publish("south", received("WELCOME", 3))
    await trail.publish("north", redeemed("WELCOME", "a"))
    await trail.publish("north", redeemed("WELCOME", "b"))
    await trail.publish("north", reversed_("WELCOME", "b"))
    released = ShareReleased(code="WELCOME", slots=1, released_total=1, answered_total=1)
    await trail.publish("north", envelope("WELCOME", released))
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert [d for d in report.differences if d.startswith("global")] == []

    at = await trail.publish("north", redeemed("WELCOME", "c"))
    for rid in ("d", "e", "f"):
        await trail.publish("south", redeemed("WELCOME", rid))
    over = await trail.publish("south", redeemed("WELCOME", "g"))
    # a redemption of a code that is not global counts against nothing
    await trail.publish("south", redeemed("LOCAL", "h"))
    async with running(nc, pool, prefix) as projector:
        await caught_up(projector, trail.seq)
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert report.differences == [
        f"global WELCOME: the Sovereigns' standing redemptions together are 6 at trail seq "
        f"{over}, more than the cap 5",
        f"global WELCOME: Sovereign north has 2 standing redemption(s) at trail seq {at}, more "
        "than the 2 slot(s) the hub allotted it less the 1 it released",
        f"global WELCOME: Sovereign south has 4 standing redemption(s) at trail seq {over}, more "
        "than the 3 slot(s) the hub allotted it less the 0 it released",
    ]


async def test_verify_fails_when_the_sovereigns_together_pass_the_cap(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str, applied: StreamsSpec
) -> None:
    # The hub's events say it allotted more than the cap (a corrupted hub): each Sovereign
    # stays within its share, and the sum still passes the cap.
    await hub_global(nc, applied, "WELCOME", cap=3, allotted={"north": 2, "south": 2})
    # east never took the global code (a voucher of its own has that code): its redemptions
    # count against no share
    await trail.publish("east", redeemed("WELCOME", "x"))
    await trail.publish("east", redeemed("WELCOME", "y"))
    await trail.publish("north", received("WELCOME", 2))
    await trail.publish("south", received("WELCOME", 2))
    for sov, rid in (("north", "a"), ("south", "b"), ("north", "c")):
        await trail.publish(sov, redeemed("WELCOME", rid))
    last = await trail.publish("south", redeemed("WELCOME", "d"))
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert report.differences == [
        f"global WELCOME: the Sovereigns' standing redemptions together are 4 at trail seq "
        f"{last}, more than the cap 3"
    ]


async def test_verify_reports_a_missing_trail_stream(
    nc: Client, pool: asyncpg.Pool, prefix: str, applied: StreamsSpec
) -> None:
    report = await verify(pool, nc, applied, trail_prefix=prefix)
    assert report.differences == [
        f"{sovereign_trail.trail_stream(prefix)}: the hub's trail stream does not exist"
    ]


# ---------------------------------------------------------------------- the HTTP report

SECRET = b"s" * 40


@contextlib.asynccontextmanager
async def report_client(pool: asyncpg.Pool, **settings: str) -> AsyncIterator[TestClient[Any, Any]]:
    """The real routes and middleware on the test's database, without the other components."""
    app = create_app(Settings(JWT_SECRET=SECRET.decode(), **settings), components=False)  # type: ignore[call-arg]
    app[keys.POOL] = pool
    app[keys.AUTHENTICATOR] = Authenticator(secret=SECRET)
    async with TestClient(TestServer(app)) as client:
        yield client


def bearer(role: str = "superadmin") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, 'u-1', role)}"}


REPORT = "/billing/reports/sovereigns"


async def test_the_report_at_the_hub_json_and_csv(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str
) -> None:
    await publish_history(trail)
    async with running(nc, pool, prefix) as projector:
        await caught_up(projector, trail.seq)
    async with report_client(pool, HUB="true", SOVEREIGNS="north,south,east") as client:
        resp = await client.get(REPORT, headers=bearer())
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["sovereigns"] == ["east", "north", "south"]
        assert body["trail_seq"] == trail.seq
        assert [
            (r["sovereign"], r["code"], r["redemptions"], r["reversed"], r["credit_granted_baisa"])
            for r in body["rows"]
        ] == [
            ("north", "WELCOME", 2, 1, 10000),
            ("south", "OTHER", 1, 0, 1000),
            ("south", "WELCOME", 1, 0, 7000),
        ]
        assert [
            (t["sovereign"], t["scope"], t["code"], t["redemptions"], t["credit_granted_baisa"])
            for t in body["totals"]
        ] == [
            ("east", "sovereign", None, 0, 0),
            ("north", "sovereign", None, 2, 10000),
            ("south", "sovereign", None, 2, 8000),
        ]
        assert body["totals"][1]["credit_granted_omr"] == 10

        resp = await client.get(REPORT, params={"format": "csv"}, headers=bearer())
        assert resp.status == 200
        assert resp.content_type == "text/csv"
        lines = (await resp.text()).splitlines()
        assert lines[0] == (
            "sovereign,scope,code,redemptions,reversed,credit_granted_omr,credit_granted_baisa"
        )
        assert lines[1] == "north,code,WELCOME,2,1,10,10000"
        assert lines[-1] == "south,sovereign,,2,0,8,8000"
        assert len(lines) == 1 + 3 + 3

        resp = await client.get(REPORT, params={"code": "OTHER"}, headers=bearer())
        body = await resp.json()
        assert [r["code"] for r in body["rows"]] == ["OTHER"]
        # a code filter is normalised like every code: " other " is OTHER
        resp = await client.get(REPORT, params={"code": " other "}, headers=bearer())
        assert [r["code"] for r in (await resp.json())["rows"]] == ["OTHER"]

        # global=true: no global vouchers read model in this database (where a build has
        # one, it is moved aside: the report reads only its codes)
        if await pool.fetchval("SELECT to_regclass('global_vouchers')") is not None:
            await pool.execute("ALTER TABLE global_vouchers RENAME TO global_vouchers_aside")
        resp = await client.get(REPORT, params={"global": "true"}, headers=bearer())
        assert resp.status == 409
        assert "global vouchers" in (await resp.json())["error"]
        await pool.execute("CREATE TABLE global_vouchers (code text PRIMARY KEY)")
        await pool.execute("INSERT INTO global_vouchers VALUES ('WELCOME')")
        resp = await client.get(REPORT, params={"global": "true"}, headers=bearer())
        body = await resp.json()
        assert [(r["sovereign"], r["code"]) for r in body["rows"]] == [
            ("north", "WELCOME"),
            ("south", "WELCOME"),
        ]


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"from": "2026-01-01T00:00:00Z"}, 400, "unknown query parameter 'from'"),
        ({"format": "xml"}, 400, "format must be json or csv"),
        ({"global": "yes"}, 400, "global must be true or false"),
        ({"code": ""}, 400, "code: code is required"),
        ({"code": "X" * 65}, 400, "code: invalid code"),
        # a NUL once reached Postgres, which refuses it in text: a 500 (found by schemathesis)
        ({"code": "WEL\x00COME"}, 400, "code: invalid code"),
        ({"code": "ÑÖ"}, 400, "code: code must be ASCII"),
    ],
)
async def test_bad_report_queries_are_400(
    pool: asyncpg.Pool, params: dict[str, str], status: int, error: str
) -> None:
    async with report_client(pool, HUB="true", SOVEREIGNS="north") as client:
        resp = await client.get(REPORT, params=params, headers=bearer())
        assert resp.status == status
        assert error in (await resp.json())["error"]
        twice = await client.get(f"{REPORT}?format=csv&format=json", headers=bearer())
        assert twice.status == 400


async def test_the_report_is_the_hubs_and_the_issuers(pool: asyncpg.Pool) -> None:
    async with report_client(pool) as client:
        resp = await client.get(REPORT, headers=bearer())
        assert resp.status == 404
        assert "not the hub" in (await resp.json())["error"]
    async with report_client(pool, HUB="true", SOVEREIGNS="north") as client:
        resp = await client.get(REPORT)
        assert resp.status == 401
        resp = await client.get(REPORT, headers=bearer("member"))
        assert resp.status == 403
        assert "error" in await resp.json()


async def test_the_applier_writes_every_column_the_migration_made(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT column_name, format_type(a.atttypid, a.atttypmod) AS type "
        "FROM information_schema.columns c JOIN pg_attribute a ON a.attrelid = "
        "format('%I.%I', c.table_schema, c.table_name)::regclass AND a.attname = c.column_name "
        "WHERE c.table_schema = 'public' AND c.table_name = 'sovereign_redemptions' "
        "ORDER BY c.ordinal_position"
    )
    short = {"timestamp with time zone": "timestamptz"}
    migrated = [(r["column_name"], short.get(r["type"], r["type"])) for r in rows]
    assert migrated == list(zip(sovereign_trail.COLUMNS, sovereign_trail._TYPES, strict=True))


async def test_the_cli_verify_and_rebuild_at_a_hub(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str, nats_url: str, database: str
) -> None:
    await publish_history(trail)
    async with running(nc, pool, prefix) as projector:
        await caught_up(projector, trail.seq)
    await pool.execute(
        "UPDATE sovereign_redemptions SET credit_baisa = 1 WHERE redemption_id = 'd'"
    )
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database,
        "SUBJECT_PREFIX": prefix,
        "HUB": "true",
        "SOVEREIGNS": "north,south",
    }

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "voucher_ledger.cli", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    result = await asyncio.to_thread(cli, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sovereign trail: head 8, read model at 8 (up to date)" in result.stdout
    assert "DIFF sovereign_redemptions[south/d].credit_baisa: read model 1, stream 7000" in (
        result.stdout
    )
    result = await asyncio.to_thread(
        cli, "rebuild", "--projection", "sovereign_trail", "--no-progress"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rebuilt sovereign_trail: the trail to seq 8; rows: sovereign_redemptions 5" in (
        result.stdout
    )
    result = await asyncio.to_thread(cli, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    # Not a hub: no trail to rebuild.
    result = await asyncio.to_thread(
        cli, "rebuild", "--projection", "sovereign_trail", HUB="false", SOVEREIGNS=""
    )
    assert result.returncode != 0
    assert "sovereign_trail is a hub's" in result.stderr


async def test_the_projector_retries_until_the_trail_exists(
    nc: Client, applied: StreamsSpec, pool: asyncpg.Pool, prefix: str
) -> None:
    async with running(nc, pool, prefix) as projector:

        def failing() -> bool:
            return projector.failing is not None

        await wait_until(failing, timeout=20, what="the projector's failure")
        stream = sovereign_trail.trail_stream(prefix)
        config = {"name": stream, "subjects": [f"{prefix}.sovereign.>"], "storage": "file"}
        await nc.request(f"$JS.API.STREAM.CREATE.{stream}", json.dumps(config).encode(), timeout=5)
        try:
            t = Trail(nc, prefix)
            await t.publish("north", redeemed("WELCOME", "a"))
            await caught_up(projector, t.seq)
            assert projector.failing is None
            assert list(await table(pool)) == [("north", "a")]
        finally:
            await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=5)


async def test_one_instance_holds_the_trail_projector_and_another_takes_over(
    nc: Client, trail: Trail, pool: asyncpg.Pool, prefix: str, applied: StreamsSpec
) -> None:
    hosts = [
        sovereign_trail.TrailProjectorHost(
            nc, pool, prefix, applied.lease_bucket, applied.lease_ttl, instance_id=name
        )
        for name in ("one", "two")
    ]
    for host in hosts:
        await host.start()
    try:
        running_on = [h for h in hosts if h.projector is not None]
        assert [h.instance_id for h in running_on] == ["one"]
        await trail.publish("north", redeemed("WELCOME", "a"))
        await caught_up(running_on[0].projector, trail.seq)  # type: ignore[arg-type]
        await hosts[0].stop(release=True)

        def taken() -> bool:
            return hosts[1].projector is not None

        await wait_until(taken, timeout=20, what="the second instance's lease")
        await trail.publish("north", redeemed("WELCOME", "b"))
        await caught_up(hosts[1].projector, trail.seq)  # type: ignore[arg-type]
        assert sorted(await table(pool)) == [("north", "a"), ("north", "b")]
    finally:
        for host in hosts:
            await host.stop(release=True)
