"""An Organization moves between two Sovereigns (issue #22, deliverable 4).

Two Sovereigns on one machine, each as it runs in production: its own nats-server, its own
PostgreSQL database, its own ``voucher-ledger serve`` (and so its own ledger signing key). An
Organization with credit, an expiring grant, a running discount, a completed and a pending order
is exported from Sovereign A with ``voucher-ledger org export`` and imported on Sovereign B
with ``voucher-ledger org import``, both run as real processes.

What is proven: B shows the same balance, movements, expiring credit and orders, and the
Organization checks out there on its carried credit; a second import changes nothing; a bundle
with one flipped byte, or signed by a key B does not trust, is refused and nothing is written;
an Organization that has another history on B is refused; A records the move (one event) and
refuses the Organization's checkouts with a 409 naming the move; exporting it again writes the
same bundle; ``verify`` is clean and a ``rebuild`` gives the live rows on both Sovereigns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop, stripe_env
from tests.e2e.faults import verify_cli, wait_read_models
from tests.fakes.stripe_server import FakeStripe
from tests.integration.histories import ROW_KEYS
from voucher_ledger.service.embedded import EmbeddedNats

pytestmark = pytest.mark.sovereigns

A_NAME, B_NAME = "a.sovereign.example", "b.sovereign.example"
NAMES: dict[str, str] = {}  # a serve's subject prefix -> its Sovereign's SOVEREIGN_FQDN


@contextlib.contextmanager
def own_nats(where: Path) -> Iterator[str]:
    """Sovereign B's nats-server (A runs on the session's)."""
    server = EmbeddedNats(where, server_name="sovereign_b")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def sovereigns(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str, fake_stripe: FakeStripe
) -> AsyncIterator[tuple[Shop, Shop]]:
    tmp = tmp_path_factory.mktemp("orgmove")
    env = stripe_env(fake_stripe)
    with own_nats(tmp / "nats-b") as nats_b:
        async with (
            shop(tmp, nats_url, pg_url, "sova", **{**env, "SOVEREIGN_FQDN": A_NAME}) as a,
            shop(tmp, nats_b, pg_url, "sovb", **{**env, "SOVEREIGN_FQDN": B_NAME}) as b,
        ):
            assert a.server.nats_url != b.server.nats_url
            assert a.server.database_url != b.server.database_url
            NAMES.update({a.server.prefix: A_NAME, b.server.prefix: B_NAME})
            yield a, b


def cli_env(
    s: Shop, *, database: bool = False, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    env = {
        **os.environ,
        "NATS_URL": s.server.nats_url,
        "SUBJECT_PREFIX": s.server.prefix,
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(s.server.data_dir),  # the processors' key is there
        "SOVEREIGN_FQDN": NAMES[s.server.prefix],  # the Sovereign's settings, as serve's
    }
    for name in ("DATABASE_URL", "JWT_SECRET", "LEDGER_SIGNING"):
        env.pop(name, None)
    if database:
        env["DATABASE_URL"] = s.server.database_url
    env.update(extra_env or {})
    return env


async def cli(
    s: Shop, *args: str, database: bool = False, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", *args],
        env=cli_env(s, database=database, extra_env=extra_env),
        capture_output=True,
        text=True,
        timeout=300,
    )


async def projected(s: Shop) -> None:
    await wait_read_models(s.server.database_url, await s.stream_seq())


async def public_key(s: Shop, path: Path) -> Path:
    """The Sovereign's key as ``voucher-ledger signing-key`` prints it, in a file."""
    printed = await cli(s, "signing-key")
    assert printed.returncode == 0, printed.stderr
    await asyncio.to_thread(path.write_text, printed.stdout)
    return path


async def issue(s: Shop, body: dict[str, Any]) -> None:
    reply = await s.request("POST", "/billing/vouchers/issue", json_body=body)
    assert reply.status == 200, reply


async def shopped_organization(a: Shop) -> str:
    """An Organization on A: a pending card order (20 OMR of credit reserved for it), then a
    completed one paid from an expiring 40 OMR grant (31 OMR of it left)."""
    org = new_customer("org")
    fixed, expiring = new_code("FIX"), new_code("EXP")
    await issue(a, {"code": fixed, "credit_omr": 20})
    await issue(a, {"code": expiring, "credit_omr": 40, "credit_valid_for": "P30D"})
    pending = await a.checkout(org, "enterprise", promo_code=fixed)
    assert pending.status == 200, pending
    assert (pending.json["status"], pending.json["state"]) == ("pending", "awaiting_payment")
    done = await a.checkout(org, "starter", promo_code=expiring)
    assert done.status == 200, done
    assert done.json["status"] == "completed"
    # a running discount (issue #21): 20 % off add-ons for three months, redeemed on a free order
    running = new_code("RUN")
    await issue(
        a,
        {
            "code": running,
            "kind": "percent_off",
            "percent_off": 20,
            "applies_to": ["addons"],
            "duration": "P3M",
        },
    )
    started = await a.checkout(org, "free", promo_code=running)
    assert started.status == 200, started
    return org


async def account_view(s: Shop, org: str) -> dict[str, Any]:
    """What the Sovereign's API and read models show of the Organization's account, without
    what is this Sovereign's own (stream sequences)."""
    balance = await s.balance(org)
    entries = [{k: v for k, v in e.items() if k != "id"} for e in balance.pop("entries")]
    orders = sorted(
        (o for o in await s.orders() if o["tenant_id"] == org), key=lambda o: o["created_at"]
    )
    lots = await s.db(
        "SELECT redemption_id, code, order_id, granted_baisa, left_baisa, expires_at "
        "FROM credit_lots WHERE customer_id = $1 ORDER BY redemption_id",
        org,
    )
    subscription = await s.request("GET", f"/billing/subscription/{org}", sub=org, role="member")
    assert subscription.status == 200, subscription
    return {
        "balance": balance,
        "entries": entries,
        "orders": orders,
        "lots": [dict(r) for r in lots],
        "subscription": subscription.json,
    }


async def rows(s: Shop) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, key in ROW_KEYS.items():
        found = await s.db(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608 - constants
        out[table] = [dict(r) for r in found]
    return out


async def verified_and_rebuilt(s: Shop) -> None:
    """verify exits 0; a rebuild from the stream swaps in the very rows the live projectors
    wrote."""
    await projected(s)
    await verify_cli(cli_env(s, database=True))
    before = await rows(s)
    rebuilt = await cli(s, "rebuild", "--no-progress", database=True)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    after = await rows(s)
    for table in ROW_KEYS:
        assert after[table] == before[table], table
    await verify_cli(cli_env(s, database=True))


async def test_an_organization_moves_with_its_history_and_the_exporter_stops_its_checkouts(
    sovereigns: tuple[Shop, Shop], tmp_path: Path
) -> None:
    a, b = sovereigns
    org = await shopped_organization(a)
    await projected(a)
    on_a = await account_view(a, org)
    assert on_a["balance"]["balance_baisa"] == 51_000  # 20 reserved + 31 expiring
    assert on_a["balance"]["credit_omr"] == 31
    assert [e["amount_baisa"] for e in on_a["balance"]["expiring"]] == [31_000]
    assert [lot["left_baisa"] for lot in on_a["lots"]] == [31_000]
    # the card order waiting, the one paid by credit, the free one that started the discount
    assert sorted(o["state"] for o in on_a["orders"]) == [
        "awaiting_payment",
        "completed",
        "completed",
    ]

    # export on A: the bundle, and the move recorded as one event
    bundle = tmp_path / "org.bundle"
    head_a = await a.stream_seq()
    exported = await cli(a, "org", "export", org, "--out", str(bundle), "--to", B_NAME)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert f"recorded: {org} moved to {B_NAME}" in exported.stdout
    assert await a.stream_seq() == head_a + 1
    lines = bundle.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert (header["tenant"], header["source"], header["destination"]) == (org, A_NAME, B_NAME)
    assert header["redemption_events"] == 3  # the three codes' redemptions, for the trail
    assert [json.loads(line)["part"] for line in lines[1:-1]].count("redemption") == 3
    [moved] = await a.db("SELECT event FROM audit_log WHERE type = 'wallet.account_moved'")
    signature = json.loads(lines[-1])["signature"]
    assert json.loads(moved["event"])["event"]["bundle_digest"] == signature["digest"]

    # A refuses the Organization's checkouts from now on, naming the move; nothing is written
    await projected(a)
    head_a = await a.stream_seq()
    refused = await a.checkout(org, "starter")
    assert refused.status == 409, refused
    assert f"moved to {B_NAME}" in refused.json["error"]
    assert await a.stream_seq() == head_a
    # with a promo code: the redemption comes first, its slot is given back with the refusal
    capped = new_code("ONE")
    await a.issue(capped, 5, max_redemptions=1)
    refused = await a.checkout(org, "starter", promo_code=capped)
    assert refused.status == 409, refused
    assert f"moved to {B_NAME}" in refused.json["error"]
    assert (await a.voucher(capped))["times_redeemed"] == 0
    other = await a.checkout(new_customer("stays"), "free", promo_code=capped)
    assert other.status == 200, other  # everyone else still checks out, and gets the slot

    # exported again: the same bytes, nothing recorded
    again = tmp_path / "again.bundle"
    second = await cli(a, "org", "export", org, "--out", str(again))
    assert second.returncode == 0, second.stdout + second.stderr
    assert again.read_bytes() == bundle.read_bytes()
    assert "written again, nothing recorded" in second.stdout

    trust_a = await public_key(a, tmp_path / "a.pub")
    trust_b = await public_key(b, tmp_path / "b.pub")
    head_b = await b.stream_seq()

    # one flipped byte (in an event's amount), a foreign signer: refused, nothing written
    data = bundle.read_bytes()
    at = data.index(b'"amount_baisa":') + len(b'"amount_baisa":')
    flipped = tmp_path / "flipped.bundle"
    flipped.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])
    tampered = await cli(b, "org", "import", str(flipped), "--trust", str(trust_a))
    assert tampered.returncode == 2, tampered.stdout + tampered.stderr
    assert "do not match its signed digest" in tampered.stderr
    assert "nothing written" in tampered.stderr
    foreign = await cli(b, "org", "import", str(bundle), "--trust", str(trust_b))
    assert foreign.returncode == 2, foreign.stdout + foreign.stderr
    assert "which this Sovereign does not trust" in foreign.stderr
    assert await b.stream_seq() == head_b

    # a dry run checks the bundle and says what it would write, writing nothing
    dry = await cli(b, "org", "import", str(bundle), "--trust", str(trust_a), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"dry run: {header['wallet_events']} events to write; nothing written" in dry.stdout
    assert await b.stream_seq() == head_b

    # imported on B: the same account, events with their original ids and times
    imported = await cli(b, "org", "import", str(bundle), "--trust", str(trust_a))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    wallet_events = header["wallet_events"]
    assert f"wrote {wallet_events} events" in imported.stdout
    assert await b.stream_seq() == head_b + wallet_events
    await projected(b)
    on_b = await account_view(b, org)
    assert on_b == on_a
    ids_a = await a.db("SELECT event_id FROM audit_log WHERE aggregate_id = $1 ORDER BY seq", org)
    ids_b = await b.db("SELECT event_id FROM audit_log WHERE aggregate_id = $1 ORDER BY seq", org)
    assert [r["event_id"] for r in ids_b] == [r["event_id"] for r in ids_a][:-1]  # not the move

    # a second import changes nothing
    head_b = await b.stream_seq()
    twice = await cli(b, "org", "import", str(bundle), "--trust", str(trust_a))
    assert twice.returncode == 0, twice.stdout + twice.stderr
    assert "holds this bundle's history already: nothing written" in twice.stdout
    assert await b.stream_seq() == head_b

    # the Organization goes on on B: its carried (expiring) credit pays a checkout
    there = await b.checkout(org, "starter")
    assert there.status == 200, there
    assert (there.json["status"], there.json["credit_applied_omr"]) == ("completed", 9)
    await projected(b)
    assert (await b.balance(org))["credit_omr"] == 31 - 9
    # ... and its running discount came along: 20 % off an add-on's 3 OMR on B
    discounted = await b.checkout(org, "free", ["backup"])
    assert discounted.status == 200, discounted
    assert (discounted.json["discount_baisa"], discounted.json["credit_applied_baisa"]) == (
        600,
        2400,
    )
    after = await cli(b, "org", "import", str(bundle), "--trust", str(trust_a))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "nothing written" in after.stdout

    await verified_and_rebuilt(a)
    await verified_and_rebuilt(b)


async def test_an_organization_with_another_history_on_the_importer_is_refused(
    sovereigns: tuple[Shop, Shop], tmp_path: Path
) -> None:
    a, b = sovereigns
    org = new_customer("twice")
    for s in (a, b):  # the same Organization name, checked out on both Sovereigns
        reply = await s.checkout(org, "free")
        assert reply.status == 200, reply
    bundle = tmp_path / "twice.bundle"
    exported = await cli(a, "org", "export", org, "--out", str(bundle))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    trust_a = await public_key(a, tmp_path / "a.pub")
    head_b = await b.stream_seq()
    refused = await cli(b, "org", "import", str(bundle), "--trust", str(trust_a))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{org} already has a different billing history on this Sovereign" in refused.stderr
    assert await b.stream_seq() == head_b
    # and an Organization A never saw has nothing to export
    missing = await cli(a, "org", "export", new_customer("nobody"), "--out", str(bundle))
    assert missing.returncode == 2
    assert "has no billing history on this Sovereign" in missing.stderr


@pytest.mark.storm
async def test_a_move_under_a_checkout_storm_with_the_exporter_killed_after_the_move(
    sovereigns: tuple[Shop, Shop], tmp_path: Path
) -> None:
    """Checkouts for the Organization keep coming while it is exported. The export process is
    killed (the failpoint's ``os._exit``, as a SIGKILL there) right after it recorded the move,
    before its bundle is in place; the import process is killed after it appended the events.
    Run again, each finishes: every checkout that succeeded is in the bundle, every one after
    the move was refused, nothing is lost or doubled, and both Sovereigns verify."""
    a, b = sovereigns
    org = await shopped_organization(a)
    scale = int(os.environ.get("VL_FAULT_SCALE", "1"))
    stop = asyncio.Event()
    answers: list[tuple[int, str]] = []

    async def customer(n: int) -> None:
        k = 0
        pace = random.Random(n)
        while not stop.is_set():
            k += 1
            reply = await a.checkout(org, "free", key=f"storm-{n}-{k}")
            answers.append((reply.status, reply.json.get("order_id") or reply.json["error"]))
            # members checking out now and then, not in a tight loop: the export waits for a
            # moment without a checkout half-way (pacing the load, not waiting for a state)
            await asyncio.sleep(pace.uniform(0, 0.04))

    storm = [asyncio.create_task(customer(n)) for n in range(4 * scale)]
    bundle = tmp_path / "storm.bundle"
    try:
        await wait_until_answers(answers, 8)
        run = await cli(
            a,
            "org",
            "export",
            org,
            "--out",
            str(bundle),
            "--wait",
            "120",
            extra_env={"VL_FAILPOINTS": "org_export.after_move"},
        )
        assert run.returncode == 86, run.stdout + run.stderr
        assert not bundle.exists()  # killed before the bundle was put in place
        await wait_until_answers(answers, len(answers) + 8)  # refusals after the move
    finally:
        stop.set()
        await asyncio.gather(*storm)
    again = await cli(a, "org", "export", org, "--out", str(bundle))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "written again, nothing recorded" in again.stdout

    accepted = {ref for status, ref in answers if status == 200}
    refused = [ref for status, ref in answers if status != 200]
    assert {status for status, _ in answers} <= {200, 409}, answers
    assert refused, "no checkout came after the move"
    assert all(f"organization {org} moved" in error for error in refused)
    lines = [json.loads(line) for line in bundle.read_bytes().splitlines()[1:-1]]
    opened = [
        line["event"]["event"]["order_id"]
        for line in lines
        if line["event"]["event"]["type"] in ("order.opened", "order.placed")
    ]
    assert accepted <= set(opened)
    assert len(opened) == len(set(opened)) == len(accepted) + 3  # and the three of the setup
    # on A nothing was opened after the move
    after_move = await a.db(
        "SELECT type FROM audit_log WHERE aggregate_id = $1 AND seq > (SELECT seq FROM "
        "audit_log WHERE aggregate_id = $1 AND type = 'wallet.account_moved')",
        org,
    )
    assert [r["type"] for r in after_move] == []

    trust_a = await public_key(a, tmp_path / "a.pub")
    head_b = await b.stream_seq()
    killed = await cli(
        b,
        "org",
        "import",
        str(bundle),
        "--trust",
        str(trust_a),
        extra_env={"VL_FAILPOINTS": "org_import.after_chunk"},
    )
    assert killed.returncode == 86, killed.stdout + killed.stderr
    rerun = await cli(b, "org", "import", str(bundle), "--trust", str(trust_a))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert await b.stream_seq() == head_b + len([x for x in lines if x["part"] == "wallet"])
    await projected(a)
    await projected(b)
    assert await account_view(b, org) == await account_view(a, org)
    await verify_cli(cli_env(a, database=True))
    await verify_cli(cli_env(b, database=True))


async def wait_until_answers(answers: list[tuple[int, str]], count: int) -> None:
    async def enough() -> bool:
        return len(answers) >= count

    await wait_until(enough, timeout=60, what=f"{count} checkout answers")
