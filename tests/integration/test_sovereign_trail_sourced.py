"""The trail's read model and ``verify`` on a trail that nats-server really sourced: a hub's
and a Sovereign's nats-servers linked as ``serve`` links them (``service/federation.py``), the
Sovereign's redemptions appended to its own event stream, copied to the hub's trail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client

from tests.conftest import wait_until
from tests.integration.test_sovereign_trail import hub_global, received, redeemed, reversed_
from voucher_ledger.config.settings import Settings
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.events import encode_envelope
from voucher_ledger.projections import sovereign_trail
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.verify import verify
from voucher_ledger.service import federation
from voucher_ledger.service.embedded import EmbeddedNats, free_port

pytestmark = pytest.mark.sovereigns

EVENTS = json.dumps({"name": "LEDGER_EVENTS", "subjects": ["ledger.events.>"]}).encode()


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[Client, Client, streams.StreamsSpec]]:
    password, port = secrets.token_hex(8), free_port()
    hub_settings = Settings(
        HUB="true", SOVEREIGNS="north", LEAF_LISTEN=f"127.0.0.1:{port}", LEAF_PASSWORD=password
    )  # type: ignore[call-arg]
    url = f"nats-leaf://leaf:{password}@127.0.0.1:{port}"
    north = Settings(SOVEREIGN_NAME="north", HUB_LEAF_URL=url)  # type: ignore[call-arg]
    hub = EmbeddedNats(
        tmp_path / "hub",
        server_name="vl_hub",
        jetstream_domain="hub",
        extra_conf=federation.server_conf(hub_settings, tmp_path / "hub" / "nats"),
    )
    sov = EmbeddedNats(
        tmp_path / "north",
        server_name="vl_north",
        jetstream_domain="north",
        extra_conf=federation.server_conf(north, tmp_path / "north" / "nats"),
    )
    hub.start()
    sov.start()
    try:
        hub_nc, sov_nc = await nats.connect(hub.url), await nats.connect(sov.url)
        try:
            spec = streams.load_spec("ledger")
            await streams.apply(hub_nc, spec)
            await sov_nc.request("$JS.API.STREAM.CREATE.LEDGER_EVENTS", EVENTS, timeout=5)
            await federation.ensure_trail(hub_nc, hub_settings, spec.event_stream)
            yield hub_nc, sov_nc, spec
        finally:
            await hub_nc.close()
            await sov_nc.close()
    finally:
        sov.stop()
        hub.stop()


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database, min_size=1, max_size=4)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


async def test_a_sourced_trail_is_projected_and_verified(
    linked: tuple[Client, Client, streams.StreamsSpec], pool: asyncpg.Pool
) -> None:
    hub, sov, spec = linked
    await hub_global(hub, spec, "WELCOME", cap=3, allotted={"north": 2})
    js = sov.jetstream()
    history = (
        received("WELCOME", 2),
        redeemed("WELCOME", "a"),
        redeemed("WELCOME", "b"),
        reversed_("WELCOME", "b"),
    )
    for env in history:
        await js.publish("ledger.events.voucher.WELCOME", encode_envelope(env))

    async def sourced(n: int) -> bool:
        return await sovereign_trail.trail_head(hub, "ledger") >= n

    await wait_until(lambda: sourced(4), timeout=60, what="the trail")
    projector = sovereign_trail.TrailProjector(hub, pool, "ledger")
    task = asyncio.create_task(projector.run())
    try:
        await wait_until(lambda: checkpoint_at(projector, 4), timeout=20)
        rows = await pool.fetch("SELECT * FROM sovereign_redemptions ORDER BY redemption_id")
        assert [(r["sovereign"], r["redemption_id"], r["reversed_trail_seq"]) for r in rows] == [
            ("north", "a", None),
            ("north", "b", 4),
        ]
        report = await verify(pool, hub, spec, trail_prefix="ledger")
        assert report.differences == []
        assert report.trail == (4, 4)

        # north redeems past the two slots it holds: the trail shows it, verify fails.
        for rid in ("c", "d"):
            await js.publish(
                "ledger.events.voucher.WELCOME", encode_envelope(redeemed("WELCOME", rid))
            )
        await wait_until(lambda: sourced(6), timeout=60, what="the trail")
        await wait_until(lambda: checkpoint_at(projector, 6), timeout=20)
        report = await verify(pool, hub, spec, trail_prefix="ledger")
        assert report.differences == [
            "global WELCOME: Sovereign north has 3 standing redemption(s) at trail seq 6, "
            "more than the 2 slot(s) the hub allotted it less the 0 it released"
        ]
    finally:
        projector.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def checkpoint_at(projector: sovereign_trail.TrailProjector, seq: int) -> bool:
    return await projector.checkpoint() >= seq
