"""The seed's design over HTTP: ``bench/seed/main.go`` built and served, and its checkout storm.

The Go server (net/http, the spec's JWT check, schema, §4.5 redemption and §5.2 credit-only
checkout; see its header) is built into the run's work dir at start and runs on the bench's
PostgreSQL, one database per durability mode (its ``synchronous_commit`` as the mode says).
Its storms go through the same aiohttp client as the service's HTTP row (``bench/checkout.py``):
vouchers issued with ``POST /billing/vouchers/issue``, then ``POST /billing/checkout`` per
attempt; afterwards the database must hold exactly what the answers said.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import tools
from bench.checkout import checkout_storm, issue_over_http
from bench.config import Workload
from bench.servers import CpuMeter, HttpProcess, ServerError
from bench.service import code_names
from bench.stats import RunStats
from voucher_ledger.service.embedded import free_port

SOURCE = Path(__file__).resolve().parent / "seed"
CATALOG = Path(__file__).resolve().parent.parent / "voucher_ledger" / "billing" / "catalog.yaml"


def build(out: Path, log: Path) -> Path:
    """``go build`` of bench/seed in GOPATH mode into ``out``; a one-line error if it fails."""
    go = tools.go_binary()
    if go is None:
        raise ServerError(f"go not found: {tools.GO_INSTALL}")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": tools.gopath(), "GOFLAGS": ""}
    done = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise ServerError(f"building bench/seed failed ({first}); see {log}")
    return out


class SeedServer(HttpProcess):
    """The built seed server on one database: migrated at start, ready once /healthz answers."""

    WHAT = "the seed server"
    POLL = 0.05

    def __init__(
        self,
        binary: Path,
        database_url: str,
        secret: str,
        log: Path,
        *,
        synchronous_commit: str = "on",
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.log = log
        self.database_url = database_url
        parts = urlsplit(database_url)
        # lib/pq sends the parameters it does not know as the session's settings.
        extra = f"sslmode=disable&synchronous_commit={synchronous_commit}"
        query = parts.query + ("&" if parts.query else "") + extra
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": urlunsplit(parts._replace(query=query)),
            "JWT_SECRET": secret,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "CATALOG_FILE": str(CATALOG),
            "REQUEST_LOG": str(log.with_suffix(".requests.log")),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [str(self.binary)]

    async def start(self, timeout: float = 30.0) -> None:
        await super().start(timeout)

    async def stored(self, tag: str) -> dict[str, int]:
        """What the storm ``tag`` left in the seed's tables (its codes start with the tag)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            pattern = tag + "-%"
            row = await conn.fetchrow(
                "SELECT (SELECT coalesce(sum(times_redeemed), 0) FROM promo_codes"
                "        WHERE code LIKE $1) AS counted,"
                " (SELECT count(*) FROM promo_redemptions WHERE code LIKE $1) AS redemptions,"
                " (SELECT count(*) FROM credit_ledger WHERE reason LIKE 'promo:' || $1)"
                "   AS credits,"
                " (SELECT count(*) FROM orders WHERE promo_code LIKE $1"
                "        AND status = 'completed') AS orders",
                pattern,
            )
        finally:
            await conn.close()
        assert row is not None
        return {key: int(row[key]) for key in ("counted", "redemptions", "credits", "orders")}


async def run_seed(
    server: SeedServer,
    workload: Workload,
    tag: str,
    secret: str,
    pids: dict[str, int],
    settle: Callable[[], Awaitable[None]] | None = None,
) -> RunStats:
    """One storm of checkouts against the seed server: vouchers issued over HTTP (not
    measured), ``settle`` awaited, then ``workload`` through the shared client with the CPU
    meter on."""
    codes = code_names(tag, workload)
    await issue_over_http(server.base_url, codes, workload.cap, secret)
    if settle is not None:
        await settle()
    with CpuMeter({"seed": server.pid, **pids}, with_children=("postgres",)) as cpu:
        stats = await checkout_storm(server.base_url, workload, codes, tag, secret)
    stored = await server.stored(tag)
    stats.extra.update(
        {
            "cpu_s": cpu.seconds,
            "stored": stored,
            "consistent": all(v == stats.ok for v in stored.values()),
        }
    )
    return stats
