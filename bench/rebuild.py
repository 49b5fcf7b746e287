"""Rebuild events/s: the read models rebuilt from sequence 1 of a run's event stream into a
fresh database.

With a ``voucher-ledger rebuild`` command (issue #5) that command is timed as a process;
without one, the service's own projectors (``vouchers`` and ``audit``, as ``serve`` runs them)
catch up from sequence 1 on a fresh database, and the result says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.connection import connect_nats
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.projector import ProjectionStatus, Projector
from voucher_ledger.projections.registry import ALL_PROJECTIONS


def rebuild_command_exists() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", "rebuild", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return out.returncode == 0


def _run_logged(args: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    with open(log, "a") as f:
        f.write(out.stdout + out.stderr)
    return out.returncode, out.stdout


SUMMARY = re.compile(
    r"rebuilt (?P<name>\S+): (?P<events>[\d,]+) events .* (?P<eps>[\d,.]+) events/s"
)


async def stream_head(nats_url: str, prefix: str) -> int:
    nc = await connect_nats(nats_url, name="bench-rebuild")
    try:
        spec = streams.load_spec(prefix)
        return await JetStreamEventStore(nc, spec.event_stream).last_sequence()
    finally:
        await nc.close()


async def checkpoints(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT projection, last_seq FROM projection_checkpoints")
    finally:
        await conn.close()
    return {str(r["projection"]): int(r["last_seq"]) for r in rows}


async def rebuild_with_command(
    nats_url: str, prefix: str, database_url: str, secret: str, log: Path
) -> dict[str, Any]:
    """``voucher-ledger rebuild`` on the service's own database (after the service stopped):
    every read model replayed from sequence 1 into shadow tables and swapped in. Its summary
    lines (``rebuilt <names>: <n> events ... <rate> events/s``) give the replay time."""
    head = await stream_head(nats_url, prefix)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "SUBJECT_PREFIX": prefix,
        "JWT_SECRET": secret,
    }
    started = time.perf_counter()
    code, stdout = await asyncio.to_thread(_run_logged, ["rebuild"], env, log)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"voucher-ledger rebuild exited with {code}; see {log}")
    projections: dict[str, dict[str, float]] = {}
    for match in SUMMARY.finditer(stdout):
        events = int(match["events"].replace(",", ""))
        eps = float(match["eps"].replace(",", ""))
        projections[match["name"]] = {
            "events": events,
            "events_per_second": eps,
            "seconds": round(events / eps, 3) if eps else 0.0,
        }
    # The rate is the stream's events over the replay time the command reports (its start-up
    # left out); when it reports per projection, over the sum of their times.
    replay = sum(p["seconds"] for p in projections.values()) or wall
    return {
        "method": "`voucher-ledger rebuild` (every read model replayed from sequence 1 into "
        "shadow tables and swapped in; rate = stream events ÷ the replay time it reports)",
        "events": head,
        "seconds": round(replay, 3),
        "events_per_second": round(head / replay, 1),
        "wall_seconds": round(wall, 3),
        "projections": projections,
        "checkpoints": await checkpoints(database_url),
    }


async def rebuild_with_projectors(nats_url: str, prefix: str, database_url: str) -> dict[str, Any]:
    spec = streams.load_spec(prefix)
    nc = await connect_nats(nats_url, name="bench-rebuild")
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=10)
    tasks: list[asyncio.Task[None]] = []
    projectors: list[Projector] = []
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        head = await JetStreamEventStore(nc, spec.event_stream).last_sequence()
        status = ProjectionStatus(pool, [p.name for p in ALL_PROJECTIONS])
        started = time.perf_counter()
        for projection in ALL_PROJECTIONS:
            projector = Projector(nc, pool, spec, projection, status)
            projectors.append(projector)
            tasks.append(asyncio.create_task(projector.run()))
        while status.low_water < head:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"projectors did not reach {head} in 600s")
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
        audit_rows = int(await pool.fetchval("SELECT count(*) FROM audit_log"))
    finally:
        for projector in projectors:
            projector.stop()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
        await nc.close()
    return {
        "method": (
            "projector catch-up from sequence 1 on a fresh database (the "
            + ", ".join(f"`{p.name}`" for p in ALL_PROJECTIONS)
            + " projectors concurrently, as `serve` runs them)"
        ),
        "events": head,
        "seconds": round(seconds, 3),
        "events_per_second": round(head / seconds, 1),
        "audit_rows": audit_rows,
    }
