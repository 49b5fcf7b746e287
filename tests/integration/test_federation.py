"""The leaf link between a hub's and a Sovereign's nats-servers, as ``serve`` configures them
(``service/federation.py``), on two real nats-servers with the same stream names.

Proven: without the Sovereign's denies, a Sovereign's append is also stored by the hub's event
stream (the reason they exist); with them it is not, and the hub's trail sources it under a
subject naming the Sovereign; the trail's sources follow SOVEREIGNS, and applying it again
changes nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from tests.conftest import wait_until
from voucher_ledger.config.settings import Settings
from voucher_ledger.service import federation
from voucher_ledger.service.embedded import EmbeddedNats, free_port

pytestmark = pytest.mark.sovereigns

EVENTS = json.dumps({"name": "LEDGER_EVENTS", "subjects": ["ledger.events.>"]}).encode()
TRAIL = federation.trail_stream("ledger")


def hub_settings(port: int, password: str, sovereigns: str = "north") -> Settings:
    return Settings(
        HUB="true", SOVEREIGNS=sovereigns, LEAF_LISTEN=f"127.0.0.1:{port}", LEAF_PASSWORD=password
    )  # type: ignore[call-arg]


@pytest.fixture
async def linked(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Client, Client, Settings, bool]]:
    denies: bool = request.param
    password, port = secrets.token_hex(8), free_port()
    settings = hub_settings(port, password)
    url = f"nats-leaf://leaf:{password}@127.0.0.1:{port}"
    north = Settings(SOVEREIGN_NAME="north", HUB_LEAF_URL=url)  # type: ignore[call-arg]
    leaf = (
        federation.server_conf(north, tmp_path / "north" / "nats")
        if denies
        else f'leafnodes {{ remotes: [{{ url: "{url}" }}] }}'
    )
    hub = EmbeddedNats(
        tmp_path / "hub",
        server_name="vl_hub",
        jetstream_domain="hub",
        extra_conf=federation.server_conf(settings, tmp_path / "hub" / "nats"),
    )
    sov = EmbeddedNats(
        tmp_path / "north", server_name="vl_north", jetstream_domain="north", extra_conf=leaf
    )
    hub.start()
    sov.start()
    try:
        hub_nc, sov_nc = await nats.connect(hub.url), await nats.connect(sov.url)
        for nc in (hub_nc, sov_nc):
            await nc.request("$JS.API.STREAM.CREATE.LEDGER_EVENTS", EVENTS, timeout=5)
        try:
            yield hub_nc, sov_nc, settings, denies
        finally:
            await hub_nc.close()
            await sov_nc.close()
    finally:
        sov.stop()
        hub.stop()


async def stored(nc: Client, stream: str) -> int:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    return int(json.loads(msg.data)["state"]["messages"])


@pytest.mark.parametrize("linked", [True, False], indirect=True, ids=["denies", "no-denies"])
async def test_the_denies_keep_a_sovereigns_appends_out_of_the_hubs_stream_and_it_is_sourced(
    linked: tuple[Client, Client, Settings, bool],
) -> None:
    hub, sov, settings, denies = linked
    assert await federation.ensure_trail(hub, settings, "LEDGER_EVENTS")
    assert await federation.ensure_trail(hub, settings, "LEDGER_EVENTS") == []
    for i in range(3):
        ack = await sov.jetstream().publish(f"ledger.events.voucher.C{i}", b"{}")
        # Without the denies the hub's stream answers too, and sometimes first.
        assert ack.domain == "north" or not denies

    async def sourced() -> bool:
        return await stored(hub, TRAIL) == 3

    await wait_until(sourced, timeout=60)
    info = await hub.jetstream().stream_info(TRAIL, subjects_filter=">")
    assert set(info.state.subjects or {}) == {
        f"ledger.sovereign.north.events.voucher.C{i}" for i in range(3)
    }
    # Without the denies the hub's own event stream stores the Sovereign's appends too.
    assert await stored(hub, "LEDGER_EVENTS") == (0 if denies else 3)


@pytest.mark.parametrize("linked", [True], indirect=True, ids=["denies"])
async def test_the_trail_follows_sovereigns(
    linked: tuple[Client, Client, Settings, bool],
) -> None:
    hub, _, settings, _ = linked
    await federation.ensure_trail(hub, settings, "LEDGER_EVENTS")
    more = hub_settings(7422, "x", "north,south")
    assert await federation.ensure_trail(hub, more, "LEDGER_EVENTS") == [
        f"stream {TRAIL}: now sourcing north, south"
    ]
    assert await federation.ensure_trail(hub, more, "LEDGER_EVENTS") == []
    info = await hub.jetstream().stream_info(TRAIL)
    assert sorted(s.external.api for s in info.config.sources or [] if s.external) == [
        "$JS.north.API",
        "$JS.south.API",
    ]
