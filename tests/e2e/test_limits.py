"""The guessing limits hold for the whole deployment: two ``voucher-ledger serve`` instances on
one NATS and PostgreSQL (same prefix, same database) share the public preview's limit, and
refused promo codes at checkout are limited per client address and per customer."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import fresh_database
from tests.e2e.api_helpers import (
    ApiServer,
    Reply,
    _delete_streams,
    assert_json_error,
    call,
    running_server,
    serve_on,
)
from tests.e2e.checkout_helpers import CHECKOUT, new_code, new_customer
from voucher_ledger.signing.keys import create_key_pair

PREVIEW = "/billing/vouchers/redeem-preview"


def assert_too_many(reply: Reply) -> int:
    assert assert_json_error(reply, 429) == "too many requests"
    retry = reply.headers.get("Retry-After", "")
    assert retry.isdigit(), reply.headers
    assert int(retry) >= 1, reply.headers
    assert reply.json["retry_after"] == int(retry)
    return int(retry)


async def test_two_serve_instances_share_one_preview_limit(
    tmp_path: Path, nats_url: str, pg_url: str, http: aiohttp.ClientSession
) -> None:
    """300 rapid previews from one client address, alternating between two instances: at most
    the burst plus what the rate refills over the test's duration are allowed (a limit per
    process would allow each instance its own burst: twice it)."""
    burst, per_minute = 10, 6
    limits = {"PREVIEW_BURST": str(burst), "PREVIEW_RATE_PER_MINUTE": str(per_minute)}
    # One deployment: both instances' processors sign with the same key.
    create_key_pair(tmp_path / "keys")
    limits["SIGNING_KEY_FILE"] = str(tmp_path / "keys" / "ledger-signing.key")
    prefix = f"lim{uuid.uuid4().hex[:10]}"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with fresh_database(pg_url) as database:
        try:
            async with (
                serve_on(tmp_path / "a", nats_url, database, prefix, **limits) as first,
                serve_on(tmp_path / "b", nats_url, database, prefix, **limits) as second,
            ):
                servers = (first, second)
                statuses: dict[int, list[int]] = {0: [], 1: []}
                started = time.monotonic()
                for i in range(300):
                    reply = await call(
                        http, "POST", servers[i % 2].url(PREVIEW), json_body={"code": "NOT-THERE"}
                    )
                    statuses[i % 2].append(reply.status)
                    if reply.status == 429:
                        assert_too_many(reply)
                elapsed = time.monotonic() - started
        finally:
            await _delete_streams(nats_url, prefix)
    every = statuses[0] + statuses[1]
    assert set(every) <= {404, 429}, every
    allowed = every.count(404)
    ceiling = burst + int(elapsed * per_minute / 60)
    assert burst <= allowed <= ceiling, (allowed, ceiling, elapsed)
    # each instance both allowed and refused: neither answered alone
    for answered in statuses.values():
        assert 404 in answered, statuses
        assert 429 in answered, statuses


# ---------------------------------------------------------------------- refused promo codes


@pytest.fixture(scope="module")
async def guarded(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    """A serve with a small refused-code limit; client addresses from X-Forwarded-For, so one
    test can be several addresses."""
    async with running_server(
        tmp_path_factory.mktemp("guarded"),
        nats_url,
        pg_url,
        name="guard",
        PROMO_REFUSAL_BURST="3",
        PROMO_REFUSAL_RATE_PER_MINUTE="1",
        TRUST_FORWARDED_FOR="true",
    ) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def checkout(
    http: aiohttp.ClientSession,
    server: ApiServer,
    sub: str,
    address: str,
    promo_code: str | None,
) -> Reply:
    # each customer its own Organization (issue #20: another user's is a 403)
    body: dict[str, object] = {"plan_id": "free", "tenant_id": sub, "apps": [], "addons": []}
    if promo_code is not None:
        body["promo_code"] = promo_code
    headers = {**server.auth("member", sub), "X-Forwarded-For": address}
    return await call(http, "POST", server.url(CHECKOUT), json_body=body, headers=headers)


async def issue(http: aiohttp.ClientSession, server: ApiServer, code: str, cap: int = 0) -> None:
    reply = await call(
        http,
        "POST",
        server.url("/billing/vouchers/issue"),
        json_body={"code": code, "credit_omr": 1, "max_redemptions": cap},
        headers=server.auth(),
    )
    assert reply.status == 200, reply


async def test_refused_promo_codes_are_limited_per_customer(
    guarded: ApiServer, http: aiohttp.ClientSession
) -> None:
    sub = new_customer("guess")
    for i in range(3):  # each from another address: only the customer's bucket empties
        reply = await checkout(http, guarded, sub, f"10.1.0.{i}", new_code("NOPE"))
        assert "invalid promo code" in assert_json_error(reply, 400)
    live = new_code("LIVE")
    await issue(http, guarded, live)
    for code in (new_code("NOPE"), live):  # past the limit even a live code is not tried
        assert_too_many(await checkout(http, guarded, sub, "10.1.0.9", code))
    # a checkout without a code is not limited
    assert (await checkout(http, guarded, sub, "10.1.0.9", None)).status == 200
    # another customer from that same address is not limited either
    other = await checkout(http, guarded, new_customer("ok"), "10.1.0.9", live)
    assert other.status == 200, other


async def test_refused_promo_codes_are_limited_per_client_address(
    guarded: ApiServer, http: aiohttp.ClientSession
) -> None:
    revoked = new_code("GONE")
    await issue(http, guarded, revoked)
    gone = await call(
        http, "DELETE", guarded.url(f"/billing/vouchers/revoke/{revoked}"), headers=guarded.auth()
    )
    assert gone.status == 200, gone
    # unknown, revoked, malformed: each a refused guess, each by another customer, one address
    for code, status in ((new_code("NOPE"), 400), (revoked, 400), ("not a code!", 400)):
        reply = await checkout(http, guarded, new_customer(), "10.2.0.2", code)
        assert "invalid promo code" in assert_json_error(reply, status)
    fresh = new_customer()
    assert_too_many(await checkout(http, guarded, fresh, "10.2.0.2", new_code("NOPE")))
    # the same new customer from another address is refused normally, not limited
    reply = await checkout(http, guarded, fresh, "10.2.0.3", new_code("NOPE"))
    assert "invalid promo code" in assert_json_error(reply, 400)


async def test_accepted_promo_codes_do_not_count(
    guarded: ApiServer, http: aiohttp.ClientSession
) -> None:
    code = new_code("MANY")
    await issue(http, guarded, code)
    for _ in range(6):  # twice the burst, one address, valid codes
        reply = await checkout(http, guarded, new_customer(), "10.3.0.1", code)
        assert reply.status == 200, reply


async def test_codes_refused_at_their_cap_are_not_guesses(
    guarded: ApiServer, http: aiohttp.ClientSession
) -> None:
    """A code at its cap exists (the preview says 410): customers racing for it from one
    address are refused by the ledger, never limited as guessers, and the address can still
    try an unknown code afterwards."""
    capped = new_code("CAP")
    await issue(http, guarded, capped, cap=1)
    assert (await checkout(http, guarded, new_customer(), "10.4.0.1", capped)).status == 200
    for _ in range(6):  # twice the burst, one address
        reply = await checkout(http, guarded, new_customer(), "10.4.0.2", capped)
        assert "invalid promo code" in assert_json_error(reply, 400)
    reply = await checkout(http, guarded, new_customer(), "10.4.0.2", new_code("NOPE"))
    assert "invalid promo code" in assert_json_error(reply, 400)
