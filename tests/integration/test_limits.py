"""The guessing limits' token buckets in the shared KV bucket (``http/ratelimit.py``) on a real
nats-server: instances on separate connections share one burst exactly, a token given back can
be taken again, keys carry their TTL, and an unreachable NATS fails open."""

from __future__ import annotations

import asyncio
import base64

from nats.aio.client import Client

from tests.conftest import connect
from voucher_ledger.http.ratelimit import Limit, SharedLimiter, TokenStore
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.api import js_api

SLOW = Limit(per_minute=1, burst=20)  # one token a minute: nothing refills during a test


async def test_concurrent_takes_on_two_connections_share_one_burst_exactly(
    nats_url: str, applied: streams.StreamsSpec
) -> None:
    """Two instances (two connections), 100 concurrent takes on one key: exactly the burst is
    allowed; the optimistic write lets no token be taken twice."""
    clients = [await connect(nats_url) for _ in range(2)]
    try:
        limiters = [
            SharedLimiter(TokenStore(nc, applied.limits_bucket), SLOW, "preview") for nc in clients
        ]
        key = limiters[0].key("addr", "203.0.113.7")
        waits = await asyncio.gather(*(limiters[i % 2].take(key) for i in range(100)))
    finally:
        for nc in clients:
            await nc.close()
    allowed = sum(1 for w in waits if w == 0)
    assert allowed == SLOW.burst, waits
    # the refused learn when the next token comes: a minute at one a minute
    assert all(w > 1 for w in waits if w > 0), waits


async def test_a_token_given_back_can_be_taken_again_and_keys_are_separate(
    nc: Client, applied: streams.StreamsSpec
) -> None:
    limiter = SharedLimiter(TokenStore(nc, applied.limits_bucket), Limit(1, 2), "promo")
    mine, other = limiter.key("customer", "alice"), limiter.key("customer", "bob")
    assert await limiter.take_all([mine]) == 0
    assert await limiter.take_all([mine]) == 0
    assert await limiter.take_all([mine]) > 0  # empty
    await limiter.give_back_all([mine])
    assert await limiter.take_all([mine]) == 0  # the returned token
    # all or nothing: the second key refuses, so the first gets its token back
    assert await limiter.take_all([other, mine]) > 0
    assert await limiter.take(other) == 0
    assert await limiter.take(other) == 0
    assert await limiter.take(other) > 0


async def test_each_write_carries_the_time_its_bucket_takes_to_fill_again(
    nc: Client, applied: streams.StreamsSpec
) -> None:
    limit = Limit(per_minute=30, burst=10)  # 20 s to fill from empty
    limiter = SharedLimiter(TokenStore(nc, applied.limits_bucket), limit, "preview")
    key = limiter.key("addr", "198.51.100.1")
    assert await limiter.take(key) == 0
    stream = applied.streams["limits"]["name"]
    info = await js_api(nc, f"STREAM.INFO.{stream}")
    assert info["config"]["allow_msg_ttl"] is True
    answer = await js_api(
        nc, f"STREAM.MSG.GET.{stream}", {"last_by_subj": f"$KV.{applied.limits_bucket}.{key}"}
    )
    headers = base64.b64decode(answer["message"]["hdrs"]).decode()
    assert "Nats-TTL: 21" in headers, headers
    assert limit.ttl == 21


async def test_an_unreachable_nats_fails_open(nats_url: str, applied: streams.StreamsSpec) -> None:
    client = await connect(nats_url)
    limiter = SharedLimiter(TokenStore(client, applied.limits_bucket), Limit(1, 1), "preview")
    key = limiter.key("addr", "192.0.2.1")
    assert await limiter.take(key) == 0
    assert await limiter.take(key) > 0
    await client.close()
    assert await limiter.take(key) == 0  # not checked: let through
    await limiter.give_back(key)  # nothing to give back to: no error either


async def test_a_storm_on_one_key_from_one_instance_is_never_refused_for_contention(
    nc: Client, applied: streams.StreamsSpec
) -> None:
    """Every client behind one address (a proxy, a benchmark), 200 takes at once on one key
    with tokens to spare: each is allowed. The instance's takes of a key go in turn, so none
    exhausts its write attempts against the others and is refused (they were, 429, in the
    checkout storms before the takes of a key were serialised)."""
    plenty = Limit(per_minute=1, burst=1000)
    limiter = SharedLimiter(TokenStore(nc, applied.limits_bucket), plenty, "preview")
    key = limiter.key("addr", "198.51.100.9")
    waits = await asyncio.gather(*(limiter.take(key) for _ in range(200)))
    assert waits == [0.0] * 200
    assert not limiter._locks  # the per-key lock goes with the last waiter
