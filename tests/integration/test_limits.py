"""The guessing limits' token buckets in the shared KV bucket (``http/ratelimit.py``) on a real
nats-server: instances on separate connections share one burst exactly, a token given back can
be taken again, keys carry their TTL, and an unreachable NATS fails open."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

from nats.aio.client import Client

from tests.conftest import connect, wait_until
from voucher_ledger.http.ratelimit import KeyMirror, Limit, SharedLimiter, TokenStore
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


async def _mirrored(nc: Client, bucket: str, probe_every: float = 0.2) -> KeyMirror:
    mirror = KeyMirror(nc, bucket, probe_every=probe_every)
    mirror.start()
    await wait_until(lambda: mirror.current, timeout=10)
    return mirror


@contextlib.asynccontextmanager
async def _copy_and_another(
    nats_url: str, bucket: str
) -> AsyncIterator[tuple[TokenStore, KeyMirror, Client]]:
    """This instance's store with its local copy, and another instance's connection."""
    mine, theirs = await connect(nats_url), await connect(nats_url)
    mirror = await _mirrored(mine, bucket)
    try:
        yield TokenStore(mine, bucket, mirror=mirror), mirror, theirs
    finally:
        await mirror.stop()
        await mine.close()
        await theirs.close()


async def test_the_checks_read_a_local_copy_that_sees_every_instance_s_takes(
    nats_url: str, applied: streams.StreamsSpec
) -> None:
    """Issue #19: the checkout's check reads the bucket's local copy, not NATS. Another
    instance's takes reach the copy; this instance's own takes are in it as soon as they are
    acknowledged."""
    async with _copy_and_another(nats_url, applied.limits_bucket) as (store, _mirror, theirs):
        here = SharedLimiter(store, Limit(1, 2), "promo")
        there = SharedLimiter(TokenStore(theirs, applied.limits_bucket), Limit(1, 2), "promo")
        key, own = here.key("customer", "mallory"), here.key("customer", "eve")
        assert store.peek(key) == (None, 0)  # from the copy: no such key, a full bucket
        assert await here.check_all([key, own]) == 0
        assert await there.take(key) == 0
        assert await there.take(key) == 0

        # the copy catches up with the other instance's writes (no NATS read on the way)
        def emptied() -> bool:
            state = (store.peek(key) or (None, 0))[0]
            return state is not None and state[0] < 1

        await wait_until(emptied, timeout=5)
        assert await here.check(key) > 0
        # this instance's own takes: in the copy when the write is acknowledged
        assert await here.take(own) == 0
        assert await here.take(own) == 0
        assert await here.check(own) > 0
        assert await here.check_all([own, here.key("addr", "192.0.2.50")]) > 0


async def test_a_copy_whose_consumer_is_gone_is_not_trusted_and_is_read_again(
    nats_url: str, applied: streams.StreamsSpec
) -> None:
    """The copy's consumer deleted behind its back: the next probe finds it gone, the copy is
    dropped (checks ask NATS meanwhile) and read again, and it sees the writes made while it
    was gone."""
    async with _copy_and_another(nats_url, applied.limits_bucket) as (store, mirror, theirs):
        here = SharedLimiter(store, Limit(1, 1), "promo")
        there = SharedLimiter(TokenStore(theirs, applied.limits_bucket), Limit(1, 1), "promo")
        key = here.key("addr", "203.0.113.99")
        stream = f"KV_{applied.limits_bucket}"
        names = (await js_api(theirs, f"CONSUMER.NAMES.{stream}"))["consumers"]
        assert names
        for name in names:
            await js_api(theirs, f"CONSUMER.DELETE.{stream}.{name}")
        assert await there.take(key) == 0  # while the copy's consumer is gone
        await wait_until(lambda: mirror.restarts >= 1, timeout=10)
        assert await here.check(key) > 0  # from NATS, or from the copy read again
        await wait_until(lambda: mirror.current, timeout=15)
        assert store.peek(key) is not None
        assert await here.check(key) > 0  # from the copy read again


async def test_with_nats_gone_the_copy_is_not_trusted_and_the_check_fails_open(
    nats_url: str, applied: streams.StreamsSpec
) -> None:
    client = await connect(nats_url)
    mirror = await _mirrored(client, applied.limits_bucket)
    try:
        store = TokenStore(client, applied.limits_bucket, mirror=mirror)
        limiter = SharedLimiter(store, Limit(1, 1), "promo")
        key = limiter.key("customer", "trudy")
        assert await limiter.take(key) == 0
        assert await limiter.check(key) > 0  # the copy holds the take
        await client.close()
        await wait_until(lambda: not mirror.current, timeout=10)
        assert store.peek(key) is None
        assert await limiter.check(key) == 0  # not checked: let through, as before
    finally:
        await mirror.stop()
