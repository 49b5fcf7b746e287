"""A hub and two Sovereigns on one machine (issue #22, deliverables 1 and 3's trail).

Three ``voucher-ledger serve`` on their embedded default nats-server (NATS_URL unset), each
with its own PostgreSQL database, all three with the same subject prefix and stream names, as
in production: the hub (HUB=true, a leafnode port, its trail sourcing both Sovereigns) and two
Sovereigns (SOVEREIGN_NAME, HUB_LEAF_URL), whose nats-servers connect to the hub's as leaf
nodes, each its own JetStream domain.

What is proven: the leaf links are up (the hub's monitoring lists both Sovereigns' servers);
the same stream names in three domains stay apart (a redemption on one Sovereign is in its
own event stream only, not in the other's nor the hub's); and every redemption made on a
Sovereign reaches the hub's trail stream by sourcing, under a subject naming the Sovereign,
with counts per Sovereign equal to the Sovereigns' own redemptions.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nats
import psutil
import pytest
from nats.aio.client import Client

from tests.conftest import fresh_database, wait_until
from tests.e2e.api_helpers import serve_on
from tests.e2e.checkout_helpers import Shop, new_code, new_customer
from tests.e2e.helpers import clean_env
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.auth import read_user
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger import global_voucher, voucher
from voucher_ledger.ledger.global_voucher import GlobalView
from voucher_ledger.service import federation
from voucher_ledger.service.embedded import free_port
from voucher_ledger.signing.keys import PRIVATE_FILE, PUBLIC_FILE, create_key_pair

pytestmark = pytest.mark.sovereigns

PREFIX = "ledger"  # the same in every domain: the leaf link must keep them apart
SOVEREIGNS = ("north", "south")
PROXY: dict[str, Proxy] = {}


class Proxy:
    """The north Sovereign's leaf link runs through this relay process: killing it drops the
    connection (not just slows it); starting it again on the same port heals it."""

    def __init__(self, listen: int, target: int) -> None:
        self.listen, self.target = listen, target
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.tcp_proxy", str(self.listen), str(self.target)],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"listening"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


class Site:
    def __init__(self, name: str, shop: Shop) -> None:
        self.name = name
        self.shop = shop

    @property
    def nats_dir(self) -> Path:
        return self.shop.server.data_dir.resolve() / "nats"

    @property
    def nats_url(self) -> str:
        return (self.nats_dir / "url").read_text().strip()

    def monitor(self, path: str) -> dict[str, Any]:
        base = (self.nats_dir / federation.MONITOR_FILE).read_text().strip()
        with urllib.request.urlopen(base + path, timeout=5) as resp:  # noqa: S310 - loopback http
            body: dict[str, Any] = json.loads(resp.read())
            return body

    async def admin(self) -> Client:
        user = read_user(self.nats_dir, "admin")
        assert user is not None
        return await nats.connect(self.nats_url, user=user.user, password=user.password)


async def subject_count(site: Site, stream: str, subject: str) -> int:
    nc = await site.admin()
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
async def topology(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> AsyncIterator[dict[str, Site]]:
    tmp = tmp_path_factory.mktemp("sovereigns")
    for name in ("hub", *SOVEREIGNS):
        (tmp / name).mkdir()
    leaf_port = free_port()
    password = secrets.token_hex(16)
    hub_env = {
        "NATS_URL": "",
        "HUB": "true",
        "SOVEREIGNS": ",".join(SOVEREIGNS),
        "LEAF_LISTEN": f"127.0.0.1:{leaf_port}",
        "LEAF_PASSWORD": password,
        # the hub's and north's processors in a child process of their serve (the default),
        # south's in the serve itself: the kill test below kills the children
    }

    # Each Sovereign's signing key made in advance, so that the hub can be given their public
    # halves (SOVEREIGN_KEYS_DIR) and check every event of its trail with them.
    keys = tmp / "sovereign-keys"
    keys.mkdir()
    for name in SOVEREIGNS:
        create_key_pair(tmp / name / "key")
        (keys / f"{name}.pub").write_text((tmp / name / "key" / PUBLIC_FILE).read_text())
    hub_env["SOVEREIGN_KEYS_DIR"] = str(keys)

    proxy = Proxy(free_port(), leaf_port)
    proxy.start()

    def sovereign_env(name: str) -> dict[str, str]:
        port = proxy.listen if name == "north" else leaf_port
        return {
            "NATS_URL": "",
            "SOVEREIGN_NAME": name,
            "HUB_LEAF_URL": f"nats-leaf://leaf:{password}@127.0.0.1:{port}",
            "SOVEREIGN_FQDN": f"{name}.sovereign.example",
            "SIGNING_KEY_FILE": str(tmp / name / "key" / PRIVATE_FILE),
            "PROCESSOR_PROCESS": "true" if name == "north" else "false",
        }

    try:
        async with (
            fresh_database(pg_url, "hub") as hub_db,
            fresh_database(pg_url, "north") as north_db,
            fresh_database(pg_url, "south") as south_db,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            serve_on(tmp / "hub", "", hub_db, PREFIX, **hub_env) as hub,
            serve_on(tmp / "north", "", north_db, PREFIX, **sovereign_env("north")) as north,
            serve_on(tmp / "south", "", south_db, PREFIX, **sovereign_env("south")) as south,
        ):
            PROXY["north"] = proxy
            yield {
                "hub": Site("hub", Shop(hub, session)),
                "north": Site("north", Shop(north, session)),
                "south": Site("south", Shop(south, session)),
            }
    finally:
        proxy.kill()  # also when a serve failed to start


async def test_three_serves_three_domains_and_two_leaf_links(topology: dict[str, Site]) -> None:
    hub = topology["hub"]
    urls = {site.nats_url for site in topology.values()}
    assert len(urls) == 3, "each serve runs its own embedded nats-server"

    def leaf_names() -> set[str]:
        return {leaf.get("name", "") for leaf in hub.monitor("/leafz").get("leafs") or []}

    await wait_until(lambda: len(leaf_names()) == 2, timeout=30)
    for name in SOVEREIGNS:
        leafs = topology[name].monitor("/leafz").get("leafs") or []
        assert len(leafs) == 1, leafs
    for name, site in topology.items():
        jsz = site.monitor("/jsz")
        assert jsz.get("config", {}).get("domain") == name, jsz.get("config")


async def test_a_redemption_stays_in_its_domain_and_reaches_the_hub_trail(
    topology: dict[str, Site],
) -> None:
    hub = topology["hub"]
    trail = federation.trail_stream(PREFIX)
    codes: dict[str, str] = {}
    for name in SOVEREIGNS:
        shop = topology[name].shop
        code = codes[name] = new_code(name.upper())
        await shop.issue(code, 100, max_redemptions=5)
        customers = [new_customer(name) for _ in range(3)]
        replies = await asyncio.gather(
            *(shop.checkout(sub, "starter", promo_code=code) for sub in customers)
        )
        assert [r.status for r in replies] == [200] * 3, replies

    for name, code in codes.items():
        mine = f"{PREFIX}.events.voucher.{code}"
        assert await subject_count(topology[name], f"{PREFIX.upper()}_EVENTS", mine) >= 4
        other = next(n for n in SOVEREIGNS if n != name)
        assert await subject_count(topology[other], f"{PREFIX.upper()}_EVENTS", mine) == 0
        assert await subject_count(hub, f"{PREFIX.upper()}_EVENTS", mine) == 0

    async def sourced() -> federation.TrailCounts:
        nc = await hub.admin()
        try:
            return await federation.trail_counts(nc, PREFIX)
        finally:
            await nc.close()

    async def all_sourced() -> bool:
        counts = await sourced()
        return all(counts.redemptions.get(n, {}).get(c, 0) == 3 for n, c in codes.items())

    # A source whose stream did not exist yet (the hub starts first) is retried by nats-server
    # with a backoff: tens of seconds at worst.
    await wait_until(all_sourced, timeout=90)
    counts = await sourced()
    for name, code in codes.items():
        assert counts.redemptions[name][code] == 3
        assert counts.redeemed(code) == 3  # named once, by its own Sovereign
        subject = f"{PREFIX}.sovereign.{name}.events.voucher.{code}"
        assert await subject_count(hub, trail, subject) == await subject_count(
            topology[name], f"{PREFIX.upper()}_EVENTS", f"{PREFIX}.events.voucher.{code}"
        )


async def federation_check(hub: Site, *args: str) -> tuple[int, str]:
    """``voucher-ledger federation check`` run at the hub, as an operator would."""
    env = clean_env(
        DATA_DIR=str(hub.shop.server.data_dir),
        HUB="true",
        SOVEREIGNS=",".join(SOVEREIGNS),
        SUBJECT_PREFIX=PREFIX,
        LOG_LEVEL="WARNING",
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", "federation", "check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


async def trail_redemptions(hub: Site, code: str) -> int:
    nc = await hub.admin()
    try:
        return (await federation.trail_counts(nc, PREFIX)).redeemed(code)
    finally:
        await nc.close()


async def test_a_cut_sovereign_keeps_redeeming_and_the_trail_catches_up_after_the_heal(
    topology: dict[str, Site],
) -> None:
    hub, north = topology["hub"], topology["north"]
    proxy = PROXY["north"]

    def north_links() -> int:
        return len(north.monitor("/leafz").get("leafs") or [])

    await wait_until(lambda: north_links() == 1, timeout=30)
    proxy.kill()  # the leaf connection drops
    await wait_until(lambda: north_links() == 0, timeout=30)

    code = new_code("CUT")
    await north.shop.issue(code, 100, max_redemptions=50)
    customers = [new_customer("cut") for _ in range(20)]
    replies = await asyncio.gather(
        *(north.shop.checkout(sub, "starter", promo_code=code) for sub in customers)
    )
    assert [r.status for r in replies] == [200] * 20, replies  # decided locally, link down
    subject = f"{PREFIX}.events.voucher.{code}"
    own = await subject_count(north, f"{PREFIX.upper()}_EVENTS", subject)
    assert own == 21  # the issue and twenty redemptions
    assert await trail_redemptions(hub, code) == 0  # nothing crossed the cut link
    code_, out = await federation_check(hub)
    assert code_ == 1, out
    assert "north: unreachable" in out, out

    proxy.start()  # healed: the leaf reconnects, the source resumes where it stopped
    await wait_until(lambda: north_links() == 1, timeout=30)

    async def caught_up() -> bool:
        return await trail_redemptions(hub, code) == 20

    await wait_until(caught_up, timeout=90)
    trail = federation.trail_stream(PREFIX)
    sourced = f"{PREFIX}.sovereign.north.events.voucher.{code}"
    assert await subject_count(hub, trail, sourced) == own
    code_, out = await federation_check(hub, "--wait", "60")
    assert code_ == 0, out
    for name in SOVEREIGNS:
        assert f"{name}: trail equals the Sovereign's stream" in out, out


# ------------------------------------------------------------------ global vouchers (deliverable 2)

USED_UP = "used up for now"  # a Sovereign's share exhausted: the customer may try again later
AT_CAP = "reached its redemption limit"  # the hub's pool empty too: the code is at its cap


async def issue_global(hub: Site, code: str, cap: int) -> dict[str, Any]:
    """Issue a global voucher at the hub, over its HTTP API as an issuer would."""
    reply = await hub.shop.request(
        "POST",
        "/billing/global-vouchers",
        json_body={"code": code, "credit_omr": 100, "max_redemptions": cap},
    )
    assert reply.status == 201, reply
    body: dict[str, Any] = reply.json
    return body


async def known_on(topology: dict[str, Site], code: str, names: Sequence[str]) -> None:
    """Wait until each named Sovereign has received its share of the global code ``code``
    (its read model shows the voucher). Until then, a checkout there is rightly refused as
    "voucher not found": the share travels by sourcing across the leaf link."""
    for name in names:
        shop = topology[name].shop

        async def has_it(shop: Shop = shop) -> bool:
            reply = await shop.request("GET", f"/billing/vouchers/{code}")
            return reply.status == 200

        await wait_until(has_it, timeout=60)


async def local_redemptions(site: Site, code: str) -> int:
    """The Sovereign's own standing redemptions of ``code`` (its stream, not a read model):
    voucher.redeemed events less reversals, folded from its event stream."""
    rows = await site.shop.db(
        "SELECT count(*) AS n FROM redemptions WHERE code = $1 AND reversed_at IS NULL", code
    )
    return int(rows[0]["n"])


async def stream_redemptions(site: Site, code: str) -> int:
    """Redemptions of ``code`` in the Sovereign's own event stream (read from NATS)."""
    nc = await site.admin()
    try:
        js = nc.jetstream()
        subject = f"{PREFIX}.events.voucher.{code}"
        info = await js.stream_info(f"{PREFIX.upper()}_EVENTS", subjects_filter=subject)
        total = sum((info.state.subjects or {}).values())
        if not total:
            return 0
        sub = await js.subscribe(subject, stream=f"{PREFIX.upper()}_EVENTS", ordered_consumer=True)
        n = 0
        try:
            for _ in range(total):
                msg = await sub.next_msg(timeout=10)
                kind = json.loads(msg.data)["event"]["type"]
                n += {"voucher.redeemed": 1, "voucher.redemption_reversed": -1}.get(kind, 0)
        finally:
            await sub.unsubscribe()
        return n
    finally:
        await nc.close()


class Storm:
    """Customers of their own Organizations checking out with one global code on the
    Sovereigns, at once; a customer whose Sovereign's share is used up (or the code at its cap)
    tries again a little later, until it succeeds or the storm is called off."""

    def __init__(
        self,
        topology: dict[str, Site],
        code: str,
        per_sovereign: int,
        *,
        tolerate_outage: bool = False,
    ) -> None:
        self.topology = topology
        # while a processor is down, a checkout may answer 503 (or time out): try again
        self.tolerate_outage = tolerate_outage
        self.code = code
        self.customers = {
            name: [new_customer(f"g{name[0]}") for _ in range(per_sovereign)] for name in SOVEREIGNS
        }
        self.won: dict[str, list[str]] = {name: [] for name in SOVEREIGNS}
        self.refusals: Counter[str] = Counter()
        self.over = asyncio.Event()

    async def customer(self, name: str, sub: str, gate: asyncio.Semaphore) -> None:
        shop = self.topology[name].shop
        # one order per customer: a retry after no answer is the same checkout (the key), so a
        # redemption the cut request made is not made twice
        key = f"gk-{sub}"
        # A checkout cut by an outage may have redeemed already: it is retried (same key) to a
        # definitive answer even once the storm is called off, so every redemption on the
        # Sovereigns is a customer's 200.
        unsettled = False
        while unsettled or not self.over.is_set():
            async with gate:
                try:
                    reply = await shop.checkout(sub, "starter", promo_code=self.code, key=key)
                except (aiohttp.ClientError, TimeoutError):
                    if not self.tolerate_outage:
                        raise
                    self.refusals["no answer"] += 1
                    unsettled = True
                    await asyncio.sleep(0.2)
                    continue
            if reply.status == 503 and self.tolerate_outage:
                self.refusals["503"] += 1
                unsettled = True
                await asyncio.sleep(0.2)
                continue
            unsettled = False
            if reply.status == 200:
                self.won[name].append(sub)
                return
            assert reply.status == 400, reply  # never a 5xx
            message = reply.json["error"]
            kind = USED_UP if USED_UP in message else AT_CAP if AT_CAP in message else message
            self.refusals[kind] += 1
            assert kind in (USED_UP, AT_CAP), reply
            await asyncio.sleep(0.2)

    def run(self) -> list[asyncio.Task[None]]:
        tasks = []
        for name, subs in self.customers.items():
            gate = asyncio.Semaphore(24)
            tasks += [asyncio.create_task(self.customer(name, sub, gate)) for sub in subs]
        return tasks

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.won.values())


async def sovereign_state(site: Site, code: str) -> voucher.VoucherState:
    """The code's voucher on a Sovereign, folded from its own event stream."""
    nc = await site.admin()
    store = JetStreamEventStore(nc, f"{PREFIX.upper()}_EVENTS")
    try:
        history = await store.load(Layout(PREFIX, 8).voucher_subject(code))
    finally:
        await store.close()
        await nc.close()
    return voucher.fold(code, history)


async def hub_state(hub: Site, code: str) -> global_voucher.GlobalState:
    """The hub aggregate's state for the code, folded from the hub's own event stream."""
    nc = await hub.admin()
    store = JetStreamEventStore(nc, f"{PREFIX.upper()}_EVENTS")
    try:
        history = await store.load(Layout(PREFIX, 8).global_subject(code))
    finally:
        await store.close()
        await nc.close()
    return global_voucher.fold(code, history)


async def hub_view(hub: Site, code: str) -> GlobalView:
    """The hub aggregate's view of the code, folded from the hub's own event stream."""
    return (await hub_state(hub, code)).view()


def figures(share: voucher.GlobalShare | None) -> tuple[int, int, int, bool, int] | None:
    """What the hub's figures set on a Sovereign's share (its demand signal aside)."""
    if share is None:
        return None
    return (share.received, share.requested, share.released, share.pool_empty, share.hub_seq)


async def settled(topology: dict[str, Site], code: str) -> dict[str, int]:
    """Wait until the hub's trail and the hub aggregate have caught up with both Sovereigns'
    own streams; return the Sovereigns' own counts."""
    hub = topology["hub"]
    own: dict[str, int] = {}

    async def caught_up() -> bool:
        for name in SOVEREIGNS:
            own[name] = await stream_redemptions(topology[name], code)
        nc = await hub.admin()
        try:
            counts = await federation.trail_counts(nc, PREFIX)
        finally:
            await nc.close()
        if any(counts.redemptions.get(n, Counter())[code] != own[n] for n in SOVEREIGNS):
            return False
        view = await hub_view(hub, code)
        return {s.sovereign: s.redeemed for s in view.sovereigns} == own

    await wait_until(caught_up, timeout=90)
    return own


async def test_a_global_code_holds_its_cap_across_both_sovereigns(
    topology: dict[str, Site],
) -> None:
    """Issue #22: cap 100, 300 customers of 300 Organizations split across both Sovereigns at
    once: exactly 100 redemptions in total on the hub's trail, none over at any moment."""
    hub = topology["hub"]
    code = new_code("GLOBAL")
    issued = await issue_global(hub, code, 100)
    assert issued["pool"] == 50
    assert [s["allotted"] for s in issued["sovereigns"]] == [25, 25]
    await known_on(topology, code, SOVEREIGNS)
    storm = Storm(topology, code, 150)
    tasks = storm.run()
    peak = 0
    while not all(t.done() for t in tasks):
        counts = [await local_redemptions(topology[n], code) for n in SOVEREIGNS]
        peak = max(peak, sum(counts))
        assert sum(counts) <= 100, counts  # at no moment over the cap
        if await trail_redemptions(hub, code) >= 100:
            break
        await asyncio.sleep(0.2)
    storm.over.set()
    await asyncio.gather(*tasks)
    own = await settled(topology, code)
    assert sum(own.values()) == 100, own
    assert storm.total == 100, storm.won
    assert {n: len(w) for n, w in storm.won.items()} == own
    assert await trail_redemptions(hub, code) == 100
    view = await hub_view(hub, code)
    assert view.redeemed == 100
    assert view.pool == 0
    for share in view.sovereigns:
        assert share.redeemed <= share.allotted - share.released, share
    assert peak <= 100
    # Each Sovereign started with 25 slots: the hub topped shares up as they were used, until
    # the whole cap was out and used.
    assert sum(s.allotted - s.released for s in view.sovereigns) == 100
    assert all(s.allotted > 25 for s in view.sovereigns), view.sovereigns


async def test_a_cut_sovereign_redeems_its_share_and_the_cap_holds_through_the_heal(
    topology: dict[str, Site],
) -> None:
    """The same storm while north's leaf link is cut (the connection dropped) mid-storm and
    restored later: north keeps redeeming up to its share, the total never exceeds the cap,
    and after the heal the hub's counts equal the Sovereigns' events."""
    hub, north = topology["hub"], topology["north"]
    proxy = PROXY["north"]

    def north_links() -> int:
        return len(north.monitor("/leafz").get("leafs") or [])

    await wait_until(lambda: north_links() == 1, timeout=30)
    code = new_code("GCUT")
    await issue_global(hub, code, 100)

    await known_on(topology, code, SOVEREIGNS)
    storm = Storm(topology, code, 150)
    tasks = storm.run()
    await wait_until(lambda: storm.total >= 20, timeout=60)
    proxy.kill()  # mid-storm: the leaf connection drops
    await wait_until(lambda: north_links() == 0, timeout=30)
    cut_at = await trail_redemptions(hub, code)

    # While cut: north goes on redeeming from the share it holds, up to all of it and no more
    # (its 150 customers keep trying), and its preview says why it refuses now.
    # (A figure the inbox had read before the cut may still be being recorded: the share is
    # taken once two reads a second apart agree.)
    held = await sovereign_state(north, code)
    while True:
        await asyncio.sleep(1)
        again = await sovereign_state(north, code)
        if figures(again.share) == figures(held.share):
            break
        held = again
    assert held.share is not None
    allowance = held.share.received - held.share.released

    async def share_used() -> bool:
        return (await sovereign_state(north, code)).times_redeemed == allowance

    await wait_until(share_used, timeout=60)
    # what the hub last said before the cut: its pool empty (then the code is at its cap, as
    # far as north knows) or not (north's share is used up for now)
    reason = "capped" if held.share.pool_empty else "share_exhausted"

    async def preview_says_used_up() -> bool:
        preview = await north.shop.request(
            "POST", "/billing/vouchers/redeem-preview", json_body={"code": code}
        )
        assert preview.status in (200, 410), preview
        return preview.status == 410 and preview.json["reason"] == reason

    await wait_until(preview_says_used_up, timeout=30)

    # Its refused customers' checkouts made it say it wants slots (voucher.share_wanted),
    # recorded while cut, once for this exhaustion however many were refused.
    async def north_wants() -> bool:
        share = (await sovereign_state(north, code)).share
        return share is not None and share.wanting

    await wait_until(north_wants, timeout=30)
    await asyncio.sleep(2)  # still cut: nothing more
    after = await sovereign_state(north, code)
    assert after.times_redeemed == allowance
    assert figures(after.share) == figures(held.share)  # nothing from the hub crossed the cut
    assert after.share is not None
    assert held.share is not None
    assert after.share.wanted == held.share.wanted + (0 if held.share.wanting else 1)
    assert storm.refusals[USED_UP if reason == "share_exhausted" else AT_CAP] > 0
    nc = await hub.admin()
    try:
        trail = await federation.trail_counts(nc, PREFIX)
    finally:
        await nc.close()
    assert trail.redemptions.get("north", Counter())[code] <= cut_at  # nothing crossed the cut
    counts = {n: await local_redemptions(topology[n], code) for n in SOVEREIGNS}
    assert sum(counts.values()) <= 100, counts

    proxy.start()  # healed
    await wait_until(lambda: north_links() == 1, timeout=30)
    deadline = asyncio.get_running_loop().time() + 120
    while not all(t.done() for t in tasks):
        counts = {n: await local_redemptions(topology[n], code) for n in SOVEREIGNS}
        assert sum(counts.values()) <= 100, counts
        if (
            await trail_redemptions(hub, code) >= 100
            or asyncio.get_running_loop().time() > deadline
        ):
            break
        await asyncio.sleep(0.3)
    storm.over.set()
    await asyncio.gather(*tasks)
    own = await settled(topology, code)
    assert sum(own.values()) == 100, own  # the heal gave the rest of the cap out, no more
    assert {n: len(w) for n, w in storm.won.items()} == own
    view = await hub_view(hub, code)
    assert {s.sovereign: s.redeemed for s in view.sovereigns} == own
    assert view.redeemed == 100

    # The hub's allocator read north's demand signals from the trail.
    async def hub_heard_the_want() -> bool:
        share = (await sovereign_state(north, code)).share
        assert share is not None
        return (await hub_state(hub, code)).part("north").wanted == share.wanted

    await wait_until(hub_heard_the_want, timeout=60)
    assert (await hub_state(hub, code)).part("north").wanted >= 1


async def test_a_revocation_at_the_hub_stops_both_sovereigns(topology: dict[str, Site]) -> None:
    hub = topology["hub"]
    code = new_code("GREV")
    await issue_global(hub, code, 100)
    for name in SOVEREIGNS:  # each Sovereign redeems it once first
        shop = topology[name].shop

        async def redeemed_once(shop: Shop = shop) -> bool:
            reply = await shop.checkout(new_customer("grev"), "starter", promo_code=code)
            return reply.status == 200

        await wait_until(redeemed_once, timeout=60)
    reply = await hub.shop.request("POST", f"/billing/global-vouchers/{code}/revoke")
    assert (reply.status, reply.json) == (200, {"ok": True}), reply

    for name in SOVEREIGNS:
        shop = topology[name].shop

        async def stopped(shop: Shop = shop) -> bool:
            reply = await shop.request("GET", f"/billing/vouchers/{code}")
            return reply.status == 200 and reply.json["revoked"] is True

        await wait_until(stopped, timeout=60)
        refused = await shop.checkout(new_customer("grev"), "starter", promo_code=code)
        assert refused.status == 400, refused
        assert "invalid promo code" in refused.json["error"], refused

    # Each Sovereign gave its unused slots back: the hub's pool holds all but the two used.
    async def returned() -> bool:
        view = await hub_view(hub, code)
        return view.pool == 98 and view.redeemed == 2

    await wait_until(returned, timeout=60)


async def test_the_hub_reports_and_verifies_what_the_sovereigns_redeemed(
    topology: dict[str, Site],
) -> None:
    """After the storms: the hub's read models (the global voucher's shares, the trail's
    report per Sovereign) say what both Sovereigns' own streams say, and ``verify`` at the hub
    (the trail folded again, each global code's shares checked step by step) finds nothing."""
    hub = topology["hub"]
    code = new_code("GREPORT")
    await issue_global(hub, code, 10)
    storm = Storm(topology, code, 8)
    tasks = storm.run()
    await wait_until(lambda: storm.total >= 10 or all(t.done() for t in tasks), timeout=120)
    storm.over.set()
    await asyncio.gather(*tasks)
    own = await settled(topology, code)
    assert sum(own.values()) == 10, own

    async def reported() -> bool:
        reply = await hub.shop.request("GET", f"/billing/reports/sovereigns?code={code}")
        assert reply.status == 200, reply
        got = {r["sovereign"]: r["redemptions"] for r in reply.json["rows"]}
        return got == {n: c for n, c in own.items() if c}

    await wait_until(reported, timeout=60)

    async def read_model() -> bool:
        reply = await hub.shop.request("GET", f"/billing/global-vouchers/{code}")
        assert reply.status == 200, reply
        shares = {s["sovereign"]: s["redeemed"] for s in reply.json["sovereigns"]}
        return reply.json["redeemed"] == 10 and shares == own

    await wait_until(read_model, timeout=60)
    off_hub = await topology["north"].shop.request("GET", "/billing/reports/sovereigns")
    assert off_hub.status == 404, off_hub
    data_dir = hub.shop.server.data_dir
    assert data_dir is not None
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", "verify", "--data-dir", str(data_dir)],
        env=clean_env(
            HUB="true", SOVEREIGNS=",".join(SOVEREIGNS), SUBJECT_PREFIX=PREFIX, NATS_URL=""
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sovereign trail: head" in done.stdout, done.stdout


def processor_child(site: Site) -> psutil.Process:
    """The processor process ``serve`` runs (and restarts when it dies)."""
    proc = site.shop.server.process.proc
    assert proc is not None
    found = [
        child
        for child in psutil.Process(proc.pid).children()
        if "processors" in " ".join(child.cmdline())
    ]
    assert len(found) == 1, found
    return found[0]


async def test_a_global_storm_holds_its_cap_while_its_deciders_are_killed(
    topology: dict[str, Site],
) -> None:
    """The cap-100 storm while the processes deciding it die: the hub's processors (which
    decide the shares) and north's (which decide north's redemptions) are SIGKILLed mid-storm;
    each serve starts its processors again. Never more than 100 at any sample; exactly 100
    at the end, on the hub's trail and in its aggregate as in the Sovereigns' own streams."""
    hub, north = topology["hub"], topology["north"]
    code = new_code("GKILL")
    await issue_global(hub, code, 100)
    storm = Storm(topology, code, 150, tolerate_outage=True)
    tasks = storm.run()
    killed: list[int] = []
    peak = 0
    deadline = asyncio.get_running_loop().time() + 180
    while not all(t.done() for t in tasks):
        counts = [await local_redemptions(topology[n], code) for n in SOVEREIGNS]
        peak = max(peak, sum(counts))
        assert sum(counts) <= 100, counts
        if not killed and storm.total >= 25:
            for site in (hub, north):
                child = processor_child(site)
                child.send_signal(signal.SIGKILL)
                killed.append(child.pid)
        if await trail_redemptions(hub, code) >= 100:
            break
        assert asyncio.get_running_loop().time() < deadline, (storm.total, storm.refusals)
        await asyncio.sleep(0.2)
    storm.over.set()
    await asyncio.gather(*tasks)
    assert len(killed) == 2
    for site in (hub, north):  # a new processor process took over
        assert processor_child(site).pid not in killed
    own = await settled(topology, code)
    assert sum(own.values()) == 100, own
    assert {n: len(w) for n, w in storm.won.items()} == own
    view = await hub_view(hub, code)
    assert view.redeemed == 100
    assert {s.sovereign: s.redeemed for s in view.sovereigns} == own
    assert peak <= 100
    # Every Sovereign event the hub's allocator counted checked with its Sovereign's key.
    log = hub.shop.server.process.output()
    assert "global share allocator running" in log
    assert "fails the check of its signatures" not in log
