"""This service's redemption end to end over HTTP: ``POST /billing/checkout`` with a promo code.

Each attempt is one customer (a bearer token whose ``sub`` is the customer) checking out the
catalog's free plan with the storm's code: 200 is a redemption, 400 whose error names the
redemption limit is a refusal at the cap, anything else is counted as unexpected. The vouchers
are issued on the command bus beforehand (not measured).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from bench.config import Workload
from bench.service import Service, Wrap
from bench.stats import Outcome, RunStats, Unexpected
from voucher_ledger.http.auth import mint_token

CHECKOUT = "/billing/checkout"
TOKEN_TTL = 6 * 3600
REQUEST_TIMEOUT = 60.0


async def checkout_available(base_url: str) -> tuple[bool, str]:
    """Whether the service has the checkout route: an unauthenticated POST is refused with
    401/400 when it exists and answers 404 when it does not (no side effects either way)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + CHECKOUT, json={}) as resp,
    ):
        body = await resp.text()
    if resp.status == 404:
        return False, f"skipped: POST {CHECKOUT} answers 404 (the route is not there yet)"
    return True, f"POST {CHECKOUT} without a token answers {resp.status} {body[:80]}"


def is_cap_refusal(status: int, body: Any) -> bool:
    if status != 400 or not isinstance(body, dict):
        return False
    message = str(body.get("error", "")).lower()
    return "limit" in message or "cap" in message


async def run_http(
    service: Service, workload: Workload, tag: str, secret: str, wrap: Wrap | None = None
) -> RunStats:
    codes = await service.prepare(workload, tag)
    key = secret.encode()
    items = [
        (code, mint_token(key, f"{tag}-cust-{i}", "member", ttl=TOKEN_TTL))
        for i, code in enumerate(codes)
    ]
    url = service.process.base_url + CHECKOUT
    connector = aiohttp.TCPConnector(limit=workload.clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def attempt(item: tuple[str, str]) -> Outcome:
            code, token = item
            body = {
                "plan_id": "free",
                "tenant_id": "t1",
                "apps": [],
                "addons": [],
                "promo_code": code,
            }
            async with session.post(
                url, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                status = resp.status
                try:
                    answer: Any = await resp.json(content_type=None)
                except ValueError:
                    answer = None
            if status == 200:
                return "ok"
            if is_cap_refusal(status, answer):
                return "cap"
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise Unexpected(f"{status} {str(error)[:100]}")

        stats = await service.storm(workload, items, attempt, wrap)
    _, hwm = service.process.memory_mb()
    stats.extra["rss_hwm_mb"] = round(hwm, 1)
    return stats
