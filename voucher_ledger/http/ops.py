"""The operations endpoints: ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from voucher_ledger.http.errors import ok
from voucher_ledger.http.keys import METRICS, NATS, OPENAPI_JSON, POOL, PROCESSORS, READER, STATUS
from voucher_ledger.http.models import HealthOut, ReadyOut


async def projection_lag(request: web.Request) -> dict[str, int] | None:
    """Events each projection still has to apply; None when NATS or Postgres cannot say."""
    return await request.app[READER].projection_lag(request.app[STATUS])


async def healthz(request: web.Request) -> web.Response:
    nats_ok = request.app[NATS].connected
    report = await request.app[PROCESSORS].report() if nats_ok else None
    return ok(
        HealthOut(
            status="ok" if nats_ok else "degraded",
            nats="connected" if nats_ok else "disconnected",
            processor_partitions=report.partitions if report is not None else [],
        )
    )


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, Any] = {}
    checks["nats"] = request.app[NATS].connected
    try:
        await asyncio.wait_for(request.app[POOL].fetchval("SELECT 1"), 2)
        checks["postgres"] = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = False
    lag = await projection_lag(request)
    checks["projection_lag"] = lag
    failing = dict(request.app[STATUS].failing)
    checks["projections_failing"] = failing
    # A projection stopped on an event that fails the ledger's signature check: which event.
    stopped = {
        name: {"seq": stop.seq, "check": stop.code, "reason": stop.reason}
        for name, stop in sorted(request.app[STATUS].stopped.items())
    }
    checks["projections_stopped"] = stopped
    ready = (
        checks["nats"]
        and checks["postgres"]
        and lag is not None
        and max(lag.values()) < 10_000
        and not failing
        and not stopped
    )
    return ok(ReadyOut(ready=bool(ready), checks=checks), status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    gauges: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    lag = await projection_lag(request)
    if lag is not None:
        gauges["voucher_ledger_projection_lag_events"] = [
            ((("projection", name),), float(value)) for name, value in sorted(lag.items())
        ]
    # The stream sequence a projection stopped on (it fails the signature check), by check.
    gauges["voucher_ledger_projection_stopped_seq"] = [
        ((("projection", name), ("check", stop.code)), float(stop.seq))
        for name, stop in sorted(request.app[STATUS].stopped.items())
    ]
    counters: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    report = await request.app[PROCESSORS].report()
    if report is not None:
        stats = report.stats
        counters["voucher_ledger_processor_commands_total"] = [
            ((("type", t), ("outcome", o)), float(n))
            for (t, o), n in sorted(stats.commands.items())
        ]
        counters["voucher_ledger_processor_conflicts_total"] = [((), float(stats.conflicts))]
        counters["voucher_ledger_processor_events_appended_total"] = [
            ((), float(stats.events_appended))
        ]
        # Appends that stored events: events_appended / appends is the mean events per append.
        counters["voucher_ledger_processor_appends_total"] = [((), float(stats.appends))]
        counters["voucher_ledger_processor_append_seconds_total"] = [
            ((), round(stats.append_seconds, 6))
        ]
        gauges["voucher_ledger_processor_partitions_held"] = [((), float(len(report.partitions)))]
    text = request.app[METRICS].render(gauges, counters)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    """The document ``create_app`` built from the route table."""
    return web.Response(text=request.app[OPENAPI_JSON], content_type="application/json")
