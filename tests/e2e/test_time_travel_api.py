"""``GET /billing/vouchers/{code}?at=TIMESTAMP`` against a real ``voucher-ledger serve``: the
voucher as it was at each moment equals what the current GET answered at that moment."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import connect, wait_until
from tests.e2e.api_helpers import (
    SECRET,
    ApiServer,
    Reply,
    _delete_streams,
    assert_json_error,
    call,
    running_server,
)
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.config.settings import Settings
from voucher_ledger.http.app import create_app
from voucher_ledger.http.auth import mint_token
from voucher_ledger.http.keys import NATS
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.commands import RedeemVoucher
from voucher_ledger.ledger.events import Actor

DETAIL = "/billing/vouchers/{code}"


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    async with running_server(tmp_path_factory.mktemp("asof"), nats_url, pg_url, "asof") as srv:
        yield srv


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def get(
    http: aiohttp.ClientSession, server: ApiServer, path: str, *, role: str | None = "superadmin"
) -> Reply:
    headers = server.auth(role) if role else {}
    return await call(http, "GET", server.url(path), headers=headers)


async def detail(
    http: aiohttp.ClientSession, server: ApiServer, code: str, query: str = ""
) -> dict[str, Any]:
    reply = await get(http, server, DETAIL.format(code=code) + query)
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json
    return body


async def redeem(server: ApiServer, code: str, customer: str) -> Accepted:
    nc = await connect(server.nats_url)
    spec = streams.load_spec(server.prefix)
    bus = CommandBus(nc, spec.layout, spec.command_stream)
    try:
        await bus.start()
        reply = await bus.send(
            RedeemVoucher(code=code, customer_id=customer), actor=Actor(sub="t", role="service")
        )
        assert isinstance(reply, Accepted), reply
        return reply
    finally:
        await bus.close()
        await nc.close()


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_detail_at_each_past_moment_is_what_it_was(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    code = f"TT-{uuid.uuid4().hex[:8]}".upper()
    issue = server.url("/billing/vouchers/issue")
    snapshots: list[dict[str, Any]] = []

    async def write(body: dict[str, Any]) -> None:
        reply = await call(http, "POST", issue, json_body=body, headers=server.auth())
        assert reply.status == 200, reply
        snapshots.append(await detail(http, server, code))

    await write({"code": code, "credit_omr": 5, "description": "first", "max_redemptions": 2})
    await write({"code": code, "credit_omr": 8})
    await redeem(server, code, "u-1")

    async def redeemed() -> bool:
        return bool((await detail(http, server, code))["times_redeemed"] == 1)

    await wait_until(redeemed, what="the redemption in the read model")
    snapshots.append(await detail(http, server, code))
    revoke = server.url(f"/billing/vouchers/revoke/{code}")
    reply = await call(http, "DELETE", revoke, headers=server.auth())
    assert reply.status == 200, reply
    snapshots.append(await detail(http, server, code))
    assert snapshots[-1]["revoked"] is True

    history = await get(http, server, f"/billing/vouchers/{code}/history")
    times = [datetime.fromisoformat(e["occurred_at"]) for e in history.json["events"]]
    assert len(times) == len(snapshots) == 4

    for at, snapshot in zip(times, snapshots, strict=True):
        assert await detail(http, server, code, f"?at={quote(iso(at))}") == snapshot
    # Between two events: the earlier state.
    middle = times[1] + (times[2] - times[1]) / 2
    assert await detail(http, server, code, f"?at={quote(iso(middle))}") == snapshots[1]
    # Any offset, '+' encoded or (as a careless client sends it) raw.
    gulf = times[2].astimezone(timezone(timedelta(hours=4))).isoformat()
    assert await detail(http, server, code, "?at=" + quote(gulf, safe="")) == snapshots[2]
    assert await detail(http, server, code, "?at=" + gulf) == snapshots[2]
    future = datetime.now(UTC) + timedelta(days=365)
    assert await detail(http, server, code, f"?at={iso(future)}") == snapshots[-1]

    before = iso(times[0] - timedelta(microseconds=1))
    reply = await get(http, server, DETAIL.format(code=code) + f"?at={before}")
    assert "not found" in assert_json_error(reply, 404)
    unknown = await get(http, server, DETAIL.format(code="NEVER-ISSUED") + f"?at={iso(future)}")
    assert_json_error(unknown, 404)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?at=yesterday", "ISO 8601"),
        ("?at=2026-11-21", "time zone"),
        ("?at=2026-11-21T12:00:00", "time zone"),
        ("?at=2026-13-01T00:00:00Z", "ISO 8601"),
        ("?at=", "ISO 8601"),
        ("?at=%00", "ISO 8601"),
        ("?at=2026-11-21T12:00:00Z&at=2026-11-22T12:00:00Z", "once"),
    ],
)
async def test_bad_at_is_a_400_with_a_json_error(
    server: ApiServer, http: aiohttp.ClientSession, query: str, message: str
) -> None:
    reply = await get(http, server, DETAIL.format(code="ANY-CODE") + query)
    assert message in assert_json_error(reply, 400)


async def test_at_is_for_issuers_only(server: ApiServer, http: aiohttp.ClientSession) -> None:
    path = DETAIL.format(code="ANY-CODE") + "?at=2026-11-21T12:00:00Z"
    assert_json_error(await get(http, server, path, role=None), 401)
    assert_json_error(await get(http, server, path, role="member"), 403)
    bad_code = await get(http, server, DETAIL.format(code="a.b") + "?at=2026-11-21T12:00:00Z")
    assert_json_error(bad_code, 400)


async def test_openapi_documents_at(server: ApiServer, http: aiohttp.ClientSession) -> None:
    reply = await get(http, server, "/openapi.json", role=None)
    params = reply.json["paths"][DETAIL]["get"]["parameters"]
    assert any(p["name"] == "at" and p["in"] == "query" for p in params)


async def test_at_requests_leave_no_subscription_behind(
    tmp_path: Path, nats_url: str, database: str, prefix: str
) -> None:
    """The app over started components on the test NATS and PostgreSQL, in process: 30 ``?at=``
    reads share the service's one stream reader, so the service's NATS connection holds no more
    subscriptions after them than after the first (a store per request left one each)."""
    settings = Settings(  # type: ignore[call-arg]
        NATS_URL=nats_url,
        DATABASE_URL=database,
        SUBJECT_PREFIX=prefix,
        JWT_SECRET=SECRET,
        DATA_DIR=str(tmp_path),
        RUN_RECOVERY="false",
    )
    app = create_app(settings, processors_in_child=False)
    token = mint_token(SECRET.encode(), "admin", "superadmin", ttl=600)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with TestClient(TestServer(app)) as client:
            code = f"SUB-{uuid.uuid4().hex[:8]}".upper()
            issued = await client.post(
                "/billing/vouchers/issue", json={"code": code, "credit_omr": 3}, headers=auth
            )
            assert issued.status == 200, await issued.text()
            at = quote(iso(datetime.now(UTC) + timedelta(seconds=1)))
            path = DETAIL.format(code=code) + f"?at={at}"
            first = await client.get(path, headers=auth)
            assert first.status == 200, await first.text()
            subs = app[NATS].nc._subs  # the service's own connection
            before = len(subs)
            for _ in range(30):
                reply = await client.get(path, headers=auth)
                assert reply.status == 200, await reply.text()
            assert len(subs) == before, (before, len(subs))
    finally:
        await _delete_streams(nats_url, prefix)
