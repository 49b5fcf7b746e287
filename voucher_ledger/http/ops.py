"""The operations endpoints: ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

# The 0.0.4 text format every Prometheus version scrapes (the library's LATEST names 1.0.0, which
# Prometheus 2.x does not announce); generate_latest writes that format.
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from voucher_ledger.http.errors import ok
from voucher_ledger.http.keys import METRICS, NATS, OPENAPI_JSON, POOL, PROCESSORS, READER, STATUS
from voucher_ledger.http.metrics import scrape_samples
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
    """Read at scrape time: the projections' lag and the processors' counters (the child
    process's, asked over NATS), then the app's registry renders them with its own."""
    lag = await projection_lag(request)
    report = await request.app[PROCESSORS].report()
    scraped, counters = scrape_samples(lag, report)
    gauges = {
        **scraped,
        # The stream sequence a projection stopped on (it fails the signature check), by check.
        "voucher_ledger_projection_stopped_seq": [
            ((("projection", name), ("check", stop.code)), float(stop.seq))
            for name, stop in sorted(request.app[STATUS].stopped.items())
        ],
    }
    text = request.app[METRICS].render(gauges, counters)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def openapi(request: web.Request) -> web.Response:
    """The document ``create_app`` built from the route table."""
    return web.Response(text=request.app[OPENAPI_JSON], content_type="application/json")
