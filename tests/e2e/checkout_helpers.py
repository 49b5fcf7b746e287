"""A shop for the checkout tests: a real ``voucher-ledger serve`` (optionally wired to the fake
Stripe server), and calls for vouchers, checkouts, webhooks, balances and orders."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import connect, stream_state
from tests.e2e.api_helpers import ApiServer, Reply, call, running_server, serve_on
from tests.fakes.stripe_server import FakeStripe, encode_event, sign

WEBHOOK_SECRET = "whsec_test_" + "w" * 32
SOVEREIGN = "t32.omani.works"
CHECKOUT = "/billing/checkout"


def stripe_env(fake: FakeStripe) -> dict[str, str]:
    return {
        "STRIPE_SECRET_KEY": fake.api_key,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": fake.base,
        "SOVEREIGN_FQDN": SOVEREIGN,
        "SUCCESS_URL": "https://shop.example/checkout/done?lang=en",
        "CANCEL_URL": "https://shop.example/checkout/cancel",
    }


def new_code(stem: str = "C") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}".upper()


def new_customer(stem: str = "cust") -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@dataclass
class Shop:
    server: ApiServer
    session: aiohttp.ClientSession

    async def request(
        self,
        method: str,
        path: str,
        *,
        sub: str | None = "admin",
        role: str = "superadmin",
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(self.server.auth(role, sub)) if sub is not None else {}
        sent.update(headers or {})
        return await call(
            self.session,
            method,
            self.server.url(path),
            json_body=json_body,
            data=data,
            headers=sent,
        )

    async def issue(self, code: str, credit_omr: int, max_redemptions: int = 0) -> None:
        reply = await self.request(
            "POST",
            "/billing/vouchers/issue",
            json_body={"code": code, "credit_omr": credit_omr, "max_redemptions": max_redemptions},
        )
        assert reply.status == 200, reply

    async def voucher(self, code: str) -> dict[str, Any]:
        reply = await self.request("GET", f"/billing/vouchers/{code}")
        assert reply.status == 200, reply
        body: dict[str, Any] = reply.json
        return body

    async def checkout(
        self,
        sub: str,
        plan_id: str = "starter",
        addons: list[str] | None = None,
        promo_code: str | None = None,
        key: str | None = None,
        path: str = CHECKOUT,
        tenant_id: str | None = None,
    ) -> Reply:
        # Since issue #20 the account is the Organization: by default each customer checks out
        # for an Organization of its own, named like it (its wallet was its own before).
        body: dict[str, Any] = {
            "plan_id": plan_id,
            "tenant_id": tenant_id if tenant_id is not None else sub,
            "apps": ["wordpress"],
            "addons": addons or [],
        }
        if promo_code is not None:
            body["promo_code"] = promo_code
        headers = {"Idempotency-Key": key} if key else None
        return await self.request(
            "POST", path, sub=sub, role="member", json_body=body, headers=headers
        )

    async def balance(self, sub: str) -> dict[str, Any]:
        reply = await self.request("GET", "/billing/balance", sub=sub, role="member")
        assert reply.status == 200, reply
        body: dict[str, Any] = reply.json
        return body

    async def orders(self, **query: str) -> list[dict[str, Any]]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        reply = await self.request("GET", "/billing/admin/orders?limit=500&" + qs)
        assert reply.status == 200, reply
        body: list[dict[str, Any]] = reply.json
        return body

    async def order(self, order_id: str) -> dict[str, Any]:
        found = [o for o in await self.orders() if o["id"] == order_id]
        assert len(found) == 1, order_id
        return found[0]

    async def webhook(
        self,
        event: dict[str, Any],
        *,
        secret: str = WEBHOOK_SECRET,
        timestamp: int | None = None,
        payload: bytes | None = None,
        signature: str | None = None,
    ) -> Reply:
        body = payload if payload is not None else encode_event(event)
        header = signature if signature is not None else sign(body, secret, timestamp)
        return await self.request(
            "POST",
            "/billing/webhook",
            sub=None,
            data=body,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )

    async def stream_seq(self) -> int:
        nc = await connect(self.server.nats_url)
        try:
            state = await stream_state(nc, f"{self.server.prefix.upper()}_EVENTS")
            return int(state["last_seq"])
        finally:
            await nc.close()

    async def db(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.server.database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def shop(tmp: Path, nats_url: str, pg_url: str, name: str, **env: str) -> AsyncIterator[Shop]:
    async with (
        running_server(tmp, nats_url, pg_url, name=name, **env) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        yield Shop(server, session)


@contextlib.asynccontextmanager
async def shop_on(
    tmp: Path, nats_url: str, database_url: str, prefix: str, expect_exit: int | None, **env: str
) -> AsyncIterator[Shop]:
    """A shop on a given database and prefix, so a restarted service sees the same data."""
    async with (
        serve_on(tmp, nats_url, database_url, prefix, expect_exit=expect_exit, **env) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        yield Shop(server, session)


async def start_stripe_checkout(
    s: Shop, fake: FakeStripe, credit_omr: int
) -> tuple[str, str, str, str]:
    """A customer with ``credit_omr`` of promo credit checks out a 29 OMR plan: (customer,
    code, order id, session id)."""
    sub = new_customer()
    code = new_code("HOOK")
    await s.issue(code, credit_omr)
    reply = await s.checkout(sub, "business", promo_code=code)
    assert reply.status == 200, reply
    assert (reply.json["status"], reply.json["state"]) == ("pending", "awaiting_payment")
    session_id = reply.json["session_url"].rsplit("/", 1)[-1]
    assert session_id in fake.sessions
    return sub, code, reply.json["order_id"], session_id


def expired_timestamp() -> int:
    return int(time.time()) - 301
