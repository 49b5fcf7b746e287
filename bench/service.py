"""This service's redemption path at the command bus, against a running ``voucher-ledger serve``.

The bench process is the bus client (``CommandBus.send``, as the HTTP layer uses it); the serve
process runs the processors and the projectors, as deployed. While a storm runs, a sampler
records the event stream's head against the projections' checkpoints (projection lag) and the
service's memory; CPU time of every process is measured around the storm.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import asyncpg
from nats.aio.client import Client

from bench.config import Workload
from bench.servers import CpuMeter, ServiceProcess
from bench.stats import Outcome, RunStats, Unexpected, drive, percentile
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.connection import connect_nats
from voucher_ledger.ledger.commands import IssueVoucher, RedeemVoucher
from voucher_ledger.ledger.events import Actor
from voucher_ledger.projections.registry import ALL_PROJECTIONS

T = TypeVar("T")
# Something to hold around exactly a storm (a profiler).
Wrap = Callable[[], contextlib.AbstractAsyncContextManager[Any]]

ADMIN = Actor(sub="bench-admin", role="superadmin")
CREDIT_BAISA = 5_000
SEND_TIMEOUT = 60.0
APPEND_COUNTERS = re.compile(
    r"^voucher_ledger_processor_(appends|events_appended|append_seconds)_total (\S+)$",
    re.MULTILINE,
)


class ServiceError(RuntimeError):
    pass


def code_names(tag: str, workload: Workload) -> list[str]:
    """The codes of one storm (unique per storm, so storms on one service never meet)."""
    if workload.kind == "hot":
        return [f"{tag}-HOT"] * workload.attempts
    return [f"{tag}-{i:06d}" for i in range(workload.attempts)]


@dataclass
class LagSampler:
    """Every ``interval``: the stream's last sequence, the lowest projection checkpoint and the
    service's RSS. The lag of a sample is ``head - applied`` events, and the age of the oldest
    event not yet applied (when the head first reached it, to the sampling resolution)."""

    service: Service
    interval: float = 0.05
    times: list[float] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stopped: bool = False

    async def _run(self) -> None:
        while not self._stopped:
            try:
                head = await self.service.head()
                applied = await self.service.applied()
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                await asyncio.sleep(self.interval)
                continue
            self.times.append(time.perf_counter())
            self.heads.append(head)
            self.applied.append(applied)
            self.rss_mb.append(self.service.process.memory_mb()[0])
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> LagSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A flag as well as a cancel: on Python 3.11 a cancel can be swallowed by the
        # ``asyncio.wait_for`` inside nats.py's request.
        self._stopped = True
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    def summary(self) -> dict[str, Any]:
        events = [max(0, h - a) for h, a in zip(self.heads, self.applied, strict=True)]
        ages: list[float] = []
        for i, (t, head, applied) in enumerate(
            zip(self.times, self.heads, self.applied, strict=True)
        ):
            if applied >= head:
                ages.append(0.0)
                continue
            first = bisect.bisect_left(self.heads, applied + 1, 0, i + 1)
            ages.append((t - self.times[min(first, i)]) * 1000)
        return {
            "lag_samples": len(events),
            "lag_p99_events": percentile(events, 99),
            "lag_max_events": max(events, default=0),
            "lag_p99_ms": round(percentile(ages, 99), 1),
            "lag_max_ms": round(max(ages, default=0.0), 1),
            "rss_peak_mb": round(max(self.rss_mb, default=0.0), 1),
        }


class Service:
    """The bench's client side of one running service: a NATS connection with a command bus,
    and a Postgres connection to read the projections' checkpoints."""

    def __init__(
        self,
        process: ServiceProcess,
        *,
        nats_url: str,
        database_url: str,
        other_pids: dict[str, int],
    ) -> None:
        self.process = process
        self.nats_url = nats_url
        self.database_url = database_url
        self.other_pids = other_pids
        self.spec = streams.load_spec(process.prefix)
        self._nc: Client | None = None
        self._bus: CommandBus | None = None
        self._store: JetStreamEventStore | None = None
        self._pg: asyncpg.Connection[asyncpg.Record] | None = None

    async def connect(self) -> None:
        self._nc = await connect_nats(self.nats_url, name="bench-client")
        self._bus = CommandBus(self._nc, self.spec.layout, self.spec.command_stream)
        await self._bus.start()
        self._store = JetStreamEventStore(self._nc, self.spec.event_stream)
        self._pg = await asyncpg.connect(self.database_url)

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 5)
        if self._pg is not None:
            await self._pg.close()

    @property
    def bus(self) -> CommandBus:
        assert self._bus is not None, "connect() first"
        return self._bus

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(
            {"service": self.process.pid, "client": os.getpid(), **self.other_pids},
        )

    async def head(self) -> int:
        assert self._store is not None
        return await self._store.last_sequence()

    async def applied(self) -> int:
        """The lowest checkpoint of the projections (0 until both have one)."""
        assert self._pg is not None
        rows = await self._pg.fetch(
            "SELECT last_seq FROM projection_checkpoints WHERE projection = ANY($1::text[])",
            [p.name for p in ALL_PROJECTIONS],
        )
        if len(rows) < len(ALL_PROJECTIONS):
            return 0
        return min(int(r["last_seq"]) for r in rows)

    async def wait_projections(self, timeout: float = 600.0) -> float:
        """Seconds until every projection has applied the whole stream."""
        started = time.perf_counter()
        head = await self.head()
        while await self.applied() < head:
            if time.perf_counter() - started > timeout:
                raise ServiceError(f"projections did not reach {head} in {timeout}s")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started

    async def appends(self) -> tuple[int, int, float] | None:
        """The processors' appends, events appended and seconds appending so far (serve's
        ``/metrics``), or None if the service does not say."""
        url = f"http://127.0.0.1:{self.process.port}/metrics"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as reply,
            ):
                text = await reply.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        found = dict(APPEND_COUNTERS.findall(text))
        if len(found) < 3:
            return None
        return (
            int(float(found["appends"])),
            int(float(found["events_appended"])),
            float(found["append_seconds"]),
        )

    async def issue(self, codes: Sequence[str], cap: int, clients: int = 64) -> None:
        unique = list(dict.fromkeys(codes))

        async def one(code: str) -> Outcome:
            reply = await self.bus.send(
                IssueVoucher(
                    code=code, credit_baisa=CREDIT_BAISA, active=True, max_redemptions=cap
                ),
                actor=ADMIN,
                timeout=SEND_TIMEOUT,
            )
            if not isinstance(reply, Accepted):
                raise Unexpected(f"issue {code}: {reply.reason}")
            return "ok"

        stats = await drive(clients, unique, one)
        if stats.ok != len(unique):
            raise ServiceError(f"issuing {len(unique)} vouchers: {dict(stats.errors)}")

    async def prepare(self, workload: Workload, tag: str) -> list[str]:
        """Issue the storm's vouchers (not measured) and let the read models catch up; the code
        of each attempt, in order."""
        codes = code_names(tag, workload)
        await self.issue(codes, workload.cap)
        await self.wait_projections()
        return codes

    async def redeem(self, item: tuple[str, str]) -> Outcome:
        code, customer = item
        reply = await self.bus.send(
            RedeemVoucher(code=code, customer_id=customer),
            actor=Actor(sub=customer, role="member"),
            timeout=SEND_TIMEOUT,
        )
        if isinstance(reply, Accepted):
            return "ok"
        if reply.reason == "cap_reached":
            return "cap"
        raise Unexpected(f"rejected: {reply.reason}")

    async def run_bus(self, workload: Workload, tag: str, wrap: Wrap | None = None) -> RunStats:
        codes = await self.prepare(workload, tag)
        items = [(code, f"{tag}-cust-{i}") for i, code in enumerate(codes)]
        return await self.storm(workload, items, self.redeem, wrap)

    async def storm(
        self,
        workload: Workload,
        items: Sequence[T],
        attempt: Callable[[T], Awaitable[Outcome]],
        wrap: Wrap | None = None,
    ) -> RunStats:
        """Drive a storm with the lag sampler and the CPU meter on (and ``wrap``, e.g. a
        profiler, around exactly the storm); then let the projections drain."""
        appends_before = await self.appends()
        async with contextlib.AsyncExitStack() as stack:
            if wrap is not None:
                await stack.enter_async_context(wrap())
            with self.cpu_meter() as cpu:
                async with LagSampler(self) as sampler:
                    stats = await drive(workload.clients, items, attempt)
        drain = await self.wait_projections()
        appends_after = await self.appends()
        if appends_before is not None and appends_after is not None:
            appends = appends_after[0] - appends_before[0]
            events = appends_after[1] - appends_before[1]
            stats.extra["appends"] = appends
            seconds = appends_after[2] - appends_before[2]
            stats.extra["events_per_append"] = round(events / appends, 1) if appends else None
            stats.extra["append_ms"] = round(1000 * seconds / appends, 2) if appends else None
        stats.extra.update(sampler.summary())
        stats.extra["drain_s"] = round(drain, 3)
        stats.extra["cpu_s"] = cpu.seconds
        return stats
