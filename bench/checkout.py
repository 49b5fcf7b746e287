"""This service's redemption end to end over HTTP: ``POST /billing/checkout`` with a promo code.

Each attempt is one customer (a bearer token whose ``sub`` is the customer) checking out the
catalog's free plan with the storm's code: 200 is a redemption, 400 whose error names the
redemption limit is a refusal at the cap, anything else is counted as unexpected. The vouchers
are issued beforehand with ``POST /billing/vouchers/issue`` (not measured). The seed's design over
HTTP (``bench/seedhttp.py``) goes through the same client: the same session settings, request
body and reading of the answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from bench.config import Workload
from bench.service import Service, Wrap, code_names
from bench.stats import Outcome, RunStats, Unexpected, drive
from voucher_ledger.http.auth import mint_token

CHECKOUT = "/billing/checkout"
ISSUE = "/billing/vouchers/issue"
CREDIT_OMR = 5
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


def _items(codes: list[str], tag: str, secret: str) -> list[tuple[str, str, str]]:
    """Each attempt's code, its customer's token and its customer's Organization (one
    customer and one Organization per attempt: a code redeems once per Organization)."""
    key = secret.encode()
    return [
        (code, mint_token(key, f"{tag}-cust-{i}", "member", ttl=TOKEN_TTL), f"{tag}-org-{i}")
        for i, code in enumerate(codes)
    ]


@contextlib.asynccontextmanager
async def _session(clients: int) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


def _attempt(
    session: aiohttp.ClientSession, url: str
) -> Callable[[tuple[str, str, str]], Awaitable[Outcome]]:
    """One checkout: the same request and the same reading of the answer on both sides."""

    async def attempt(item: tuple[str, str, str]) -> Outcome:
        code, token, tenant = item
        body = {
            "plan_id": "free",
            "tenant_id": tenant,
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

    return attempt


async def issue_over_http(
    base_url: str, codes: Sequence[str], cap: int, secret: str, clients: int = 64
) -> None:
    """``POST /billing/vouchers/issue`` for every code of a storm (not measured), as a
    superadmin: both sides are set up through their own issue endpoint."""
    unique = list(dict.fromkeys(codes))
    token = mint_token(secret.encode(), "bench-admin", "superadmin", ttl=TOKEN_TTL)
    url = base_url + ISSUE

    async with _session(clients) as session:

        async def one(code: str) -> Outcome:
            body = {"code": code, "credit_omr": CREDIT_OMR, "active": True, "max_redemptions": cap}
            async with session.post(
                url, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                text = await resp.text()
            if resp.status != 200:
                raise Unexpected(f"issue {code}: {resp.status} {text[:100]}")
            return "ok"

        stats = await drive(clients, unique, one)
    if stats.ok != len(unique):
        raise RuntimeError(f"issuing {len(unique)} vouchers at {base_url}: {dict(stats.errors)}")


async def checkout_storm(
    base_url: str, workload: Workload, codes: list[str], tag: str, secret: str
) -> RunStats:
    """``workload`` as checkouts against ``base_url`` (the vouchers issued), nothing around it:
    the seed's storm."""
    items = _items(codes, tag, secret)
    async with _session(workload.clients) as session:
        return await drive(workload.clients, items, _attempt(session, base_url + CHECKOUT))


async def run_http(
    service: Service,
    workload: Workload,
    tag: str,
    secret: str,
    wrap: Wrap | None = None,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> RunStats:
    """This service's checkout storm: vouchers issued over HTTP and the read models caught up
    (not measured), ``settle`` awaited, then the storm with the service's lag sampler and CPU
    meter around it."""
    codes = code_names(tag, workload)
    await issue_over_http(service.process.base_url, codes, workload.cap, secret)
    await service.wait_projections()
    if settle is not None:
        await settle()
    items = _items(codes, tag, secret)
    async with _session(workload.clients) as session:
        attempt = _attempt(session, service.process.base_url + CHECKOUT)
        stats = await service.storm(workload, items, attempt, wrap)
    _, hwm = service.process.memory_mb()
    stats.extra["rss_hwm_mb"] = round(hwm, 1)
    return stats
