"""What the fault-injection tests share: their size, a streams file the service processes read,
the event stream's leader, and the checks every fault test ends with (the stream against the
replies, the read models against the stream, ``voucher-ledger verify``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from nats.aio.client import Client

from tests.conftest import wait_until
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.events import RecordedEvent


def fault_scale() -> int:
    """``VL_FAULT_SCALE=N`` multiplies the storms of the fault tests (CI runs 1)."""
    return max(1, int(os.environ.get("VL_FAULT_SCALE", "1")))


def write_streams_file(path: Path, overrides: dict[str, Any]) -> Path:
    """The packaged ``streams.yaml`` with ``overrides`` merged in, for ``STREAMS_FILE``, so the
    service processes apply the same declaration as the test."""
    raw = streams._merge(yaml.safe_load(streams.DEFAULT_FILE.read_text()), overrides)
    path.write_text(yaml.safe_dump(raw))
    return path


async def stream_info(nc: Client, stream: str, timeout: float = 2.0) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
    info: dict[str, Any] = json.loads(msg.data)
    if "error" in info:
        raise AssertionError(f"stream info {stream}: {info['error']}")
    return info


async def stream_leader(nc: Client, stream: str, other_than: str | None = None) -> str:
    """The server name of ``stream``'s current leader, waiting through an election (until it is
    not ``other_than``, a leader just killed)."""
    found: list[str] = []

    async def elected() -> bool:
        try:
            leader = (await stream_info(nc, stream)).get("cluster", {}).get("leader")
        except Exception:  # noqa: BLE001 - no leader yet: the request times out
            return False
        if not leader or leader == other_than:
            return False
        found.append(str(leader))
        return True

    await wait_until(elected, timeout=60, what=f"a leader for {stream}")
    return found[-1]


async def replicas_current(nc: Client, stream: str, size: int) -> None:
    """Every replica of ``stream`` (``size`` servers) is back and current: a restarted node
    has caught up."""

    async def current() -> bool:
        try:
            cluster = (await stream_info(nc, stream)).get("cluster", {})
        except Exception:  # noqa: BLE001 - mid-election
            return False
        replicas = cluster.get("replicas") or []
        return (
            bool(cluster.get("leader"))
            and len(replicas) == size - 1
            and all(r.get("current") for r in replicas)
        )

    await wait_until(current, timeout=90, what=f"every replica of {stream} current")


def assert_each_command_once(history: Iterable[RecordedEvent]) -> Counter[str]:
    """No command took effect twice: one command's events are one atomic batch, so they are
    adjacent on their subject; a command id showing up in two places was applied twice.
    Returns how many events each command id has."""
    counts: Counter[str] = Counter()
    previous: str | None = None
    seen: set[str] = set()
    for recorded in history:
        command_id = recorded.envelope.command_id
        if command_id != previous:
            assert command_id not in seen, f"command {command_id} applied twice"
            seen.add(command_id)
        previous = command_id
        counts[command_id] += 1
    return counts


def assert_replies_on_stream(replies: Iterable[Accepted], history: Iterable[RecordedEvent]) -> None:
    """Every accepted reply's ``seq`` holds an event of that reply's command."""
    by_seq = {r.seq: r for r in history}
    for reply in replies:
        recorded = by_seq.get(reply.seq)
        assert recorded is not None, f"accepted {reply.command_id} at seq {reply.seq}: no event"
        assert recorded.envelope.command_id == reply.command_id, (
            f"seq {reply.seq} holds {recorded.envelope.command_id}, reply says {reply.command_id}"
        )


async def wait_read_models(database_url: str, head: int, timeout: float = 90) -> None:
    """Every projection's checkpoint reaches the stream's last sequence ``head``."""
    conn = await asyncpg.connect(database_url)
    try:

        async def reached() -> bool:
            rows = await conn.fetch("SELECT projection, last_seq FROM projection_checkpoints")
            return len(rows) >= 3 and all(r["last_seq"] >= head for r in rows)

        await wait_until(reached, timeout=timeout, what=f"read models at seq {head}")
    finally:
        await conn.close()


async def verify_cli(env: dict[str, str]) -> str:
    """``voucher-ledger verify`` as a subprocess: it must exit 0 (read models = the stream)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout
