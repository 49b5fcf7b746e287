"""Guessing limits for the whole deployment: the public preview per client address, and refused
promo codes at checkout per client address and per customer. Every ``serve`` instance on one
NATS shares them.

**Algorithm.** A token bucket per key (``burst`` tokens, refilled at ``per_minute``), its state
``{"tokens", "at"}`` the value of one key of the KV bucket ``<PREFIX>_LIMITS`` (streams.yaml).
Taking a token reads the key (with its revision) and writes the new state only if the key is
still at that revision (``Nats-Expected-Last-Subject-Sequence``, the KV ``update``); a concurrent
writer makes the write fail and the take starts again from the new state. So every token is
taken exactly once whichever instance takes it: two instances cannot both spend the same burst.
A refusal writes nothing (the state stays valid: refill is computed from ``at``), so a flood of
refused requests costs one read each and never contends. Each write carries ``Nats-TTL``: the
time an empty bucket takes to fill again, after which a missing key and a full bucket are the
same thing; idle keys go by themselves.

Clocks: ``at`` is the writer's wall clock, and is never moved backwards (``max(at, now)``), so an
instance whose clock is behind refills nothing until it catches up: clock skew between instances
can only make the limit stricter, by at most the skew, never looser.

**NATS unreachable** (no answer, no connection): the limiter fails open, with one log line per
limiter every 30 s while it lasts: the preview's answers are public anyway and the checkout's
redemption is still decided by the ledger (a cap is exact without the limiter); a broker outage
must not also turn every customer away. A take that keeps conflicting (many requests on one key
at the same moment) is refused, never let through.

**Contention.** Within one process the takes of one key wait for each other (one lock per key,
dropped when idle), so a key's writes conflict only with another instance's: a storm from one
address (every client behind one proxy, a benchmark) costs one read and one write per request,
in turn, instead of every request retrying against all the others until it is refused.

**The checkout's check reads a local copy** (:class:`KeyMirror`, issue #19): every instance
follows the bucket with an ordered consumer (each key's last value, then every write), so the
two reads before each checkout are dictionary lookups, not two NATS round trips. The copy is
trusted only while it is known to be current: once a second its consumer is asked how far it
is, and a copy whose consumer is gone, or has writes left to deliver and delivered none since
the second before, is dropped and read again from the start; meanwhile every check asks NATS
as before. An instance's own writes go into its copy when their acknowledgement comes. Takes
(a read-modify-write with the key's revision) always read NATS.

**Refused promo codes** are counted, not reserved: a checkout with a promo code first reads
its address's and its customer's buckets (refused at once when either is empty) and takes a
token from each only when the ledger refuses the code as a guess (unknown, revoked, malformed;
not at its cap or inactive: http/billing.py ``_a_guess``). Concurrent guesses from one key can
therefore pass the check together before their refusals are counted: at most one burst more
than the limit, once (what a reservation would prevent at the price of four writes on every
accepted checkout).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from voucher_ledger.jetstream.api import JetStreamApiError, parse_api_answer

log = logging.getLogger(__name__)

_NO_MESSAGE = 10037  # stream msg get: no message found
_WRONG_LAST_SEQUENCE = (10071, 10164)
_NO_ANSWER = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
)
MAX_TRIES = 25  # read-modify-write attempts before a take under contention is refused
_LOG_EVERY = 30.0  # seconds between two "limiter unavailable" log lines

State = tuple[float, float]  # tokens, at (unix seconds)


class LimiterUnavailable(Exception):
    """NATS did not answer: the limit could not be checked."""


@dataclass(frozen=True)
class Limit:
    per_minute: float
    burst: int

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.per_minute / 60.0

    @property
    def ttl(self) -> int:
        """Seconds an empty bucket takes to fill again (plus one): a key may go after that."""
        return math.ceil(self.burst / self.rate) + 1


def refill(state: State | None, now: float, limit: Limit) -> State:
    """The bucket as of ``now``: a missing key is a full bucket."""
    if state is None:
        return float(limit.burst), now
    tokens, at = state
    tokens = min(float(limit.burst), tokens + max(0.0, now - at) * limit.rate)
    return tokens, max(at, now)


def wait_for(tokens: float, limit: Limit) -> float:
    """Seconds until the bucket holds one token again."""
    return max(0.0, (1.0 - tokens) / limit.rate)


def retry_after_header(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


def too_many_requests(wait: float) -> web.Response:
    """The 429 answer: ``{"error": "too many requests", "retry_after": n}`` and ``Retry-After``."""
    retry = retry_after_header(wait)
    return web.json_response(
        {"error": "too many requests", "retry_after": int(retry)},
        status=429,
        headers={"Retry-After": retry},
    )


def key_for(kind: str, value: str) -> str:
    """A KV key for a client address or a customer (a digest: any text fits a key)."""
    return f"{kind}.{hashlib.sha256(value.encode()).hexdigest()[:32]}"


class KeyMirror:
    """Every key of the bucket as last written, kept by an ordered consumer of the bucket (each
    key's last value, then every write): the checkout's check reads its keys here (see the
    module docstring). :meth:`get` answers only while the copy is known to be current: its
    consumer had nothing left to deliver, and at every probe (``probe_every`` seconds) it
    still has nothing left or has delivered more since the probe before. Otherwise None, and
    the caller asks NATS."""

    def __init__(
        self,
        nc: Client,
        bucket: str,
        *,
        probe_every: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._probe_every = probe_every
        self._clock = clock
        # key -> (state, revision, when it may go: the write's Nats-TTL after it came)
        self._keys: dict[str, tuple[State | None, int, float]] = {}
        self._current = False
        self._stale = True  # between two follows: nothing may mark the copy current
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0  # times the copy was dropped and read again (tests, diagnostics)

    @property
    def current(self) -> bool:
        return self._current

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mirror {self._stream}")

    async def stop(self) -> None:
        self._current = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    def get(self, key: str) -> tuple[State | None, int] | None:
        if not self._current:
            return None
        item = self._keys.get(key)
        return (None, 0) if item is None else (item[0], item[1])

    def note(self, key: str, state: State, revision: int, ttl: int) -> None:
        """This instance's own write (acknowledged at ``revision``), before its copy comes."""
        item = self._keys.get(key)
        if item is None or item[1] < revision:
            self._keys[key] = (state, revision, self._clock() + ttl)

    def _put(self, subject: str, revision: int, data: bytes, headers: dict[str, str]) -> None:
        key = subject.removeprefix(self._prefix)
        item = self._keys.get(key)
        if item is not None and item[1] >= revision:
            return
        try:
            ttl = float(headers.get("Nats-TTL", "0").rstrip("s") or 0)
        except ValueError:
            ttl = 0.0
        try:
            raw = json.loads(data)
            state: State | None = (float(raw["tokens"]), float(raw["at"]))
        except (ValueError, KeyError, TypeError):
            state = None  # unreadable: a full bucket, as load() reads it
        self._keys[key] = (state, revision, self._clock() + ttl if ttl > 0 else math.inf)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, item in self._keys.items() if item[2] < now]:
            del self._keys[key]

    async def _run(self) -> None:
        pause = 0.5
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage or a stale copy: start over
                log.info("limits copy of %s: %r; reading it again", self._stream, exc)
            self.restarts += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _follow(self) -> None:
        """Read the bucket from the start and follow it, probing; returns only by raising (not
        current again until the next follow has caught up: see ``finally``)."""
        self._keys = {}
        js = self._nc.jetstream()

        async def put(msg: Msg) -> None:
            meta = msg.metadata
            self._put(msg.subject, meta.sequence.stream, msg.data, msg.headers or {})
            if meta.num_pending == 0 and not self._stale:
                self._current = True

        self._stale = False
        sub = await js.subscribe(
            self._prefix + ">",
            stream=self._stream,
            cb=put,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        delivered = -1
        try:
            while True:
                # A probe: the consumer has nothing left to deliver, or it delivered more since
                # the probe before; else the copy is stale (its consumer gone, or stuck).
                info = await sub.consumer_info()
                sent = int(info.delivered.stream_seq or 0) if info.delivered else 0
                if info.num_pending == 0 and sub.pending_msgs == 0:
                    self._current = True
                elif sent <= delivered:
                    raise _Stale(f"{info.num_pending} writes not delivered")
                delivered = sent
                self._sweep()
                await asyncio.sleep(self._probe_every)
        finally:
            self._stale = True
            self._current = False
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class _Stale(Exception):
    """The copy fell a probe behind the bucket."""


class TokenStore:
    """The bucket states in the KV bucket, read and written with their revision."""

    def __init__(
        self, nc: Client, bucket: str, *, timeout: float = 2.0, mirror: KeyMirror | None = None
    ) -> None:
        self._nc = nc
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._timeout = timeout
        self.mirror = mirror

    def peek(self, key: str) -> tuple[State | None, int] | None:
        """The key's state and revision from the local copy (:class:`KeyMirror`); None when
        there is no copy or it is not known to be current (then :meth:`load` asks NATS)."""
        return self.mirror.get(key) if self.mirror is not None else None

    async def load(self, key: str) -> tuple[State | None, int]:
        """The key's state and revision; (None, 0) when it has none (never set, or expired).

        A direct get (``$JS.API.DIRECT.GET.<stream>.<subject>``, the bucket allows them),
        answered by the stream itself rather than through nats-server's JetStream API queue
        (the leader's ``STREAM.MSG.GET``). On a replicated bucket a follower may answer a
        revision behind: a take's write then fails its expectation and reads again."""
        self._check_connected()
        try:
            msg = await self._nc.request(
                f"$JS.API.DIRECT.GET.{self._stream}.{self._prefix}{key}",
                b"",
                timeout=self._timeout,
            )
        except _NO_ANSWER as exc:
            raise LimiterUnavailable(f"{self._stream}: no answer") from exc
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None, 0
        if status:
            description = headers.get("Description", "")
            raise LimiterUnavailable(f"{self._stream}: {status} {description}".rstrip())
        try:
            revision = int(headers["Nats-Sequence"])
        except (KeyError, ValueError) as exc:
            raise LimiterUnavailable(f"{self._stream}: a direct get without a sequence") from exc
        try:
            raw = json.loads(msg.data)
            return (float(raw["tokens"]), float(raw["at"])), revision
        except (ValueError, KeyError, TypeError):
            return None, revision  # unreadable: start over from a full bucket

    async def save(self, key: str, state: State, revision: int, ttl: int) -> bool:
        """Write ``state`` if the key is still at ``revision``; False if another write came
        first."""
        self._check_connected()
        payload = json.dumps({"tokens": round(state[0], 6), "at": state[1]}).encode()
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-TTL": str(ttl)}
        try:
            msg = await self._nc.request(
                self._prefix + key, payload, timeout=self._timeout, headers=headers
            )
            ack = parse_api_answer(msg.data, what=f"limit {key}")
        except _NO_ANSWER as exc:
            raise LimiterUnavailable(f"{self._stream}: no answer") from exc
        except JetStreamApiError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise LimiterUnavailable(f"{self._stream}: {exc.description}") from exc
        if self.mirror is not None and isinstance(ack.get("seq"), int):
            self.mirror.note(key, state, ack["seq"], ttl)
        return True

    def _check_connected(self) -> None:
        if not self._nc.is_connected:  # fail now, not after a buffered request's timeout
            raise LimiterUnavailable("not connected to NATS")


class SharedLimiter:
    """One limit (its keys: ``<name>.<kind>.<digest>``) over the shared :class:`TokenStore`."""

    def __init__(
        self,
        store: TokenStore,
        limit: Limit,
        name: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.name = name
        self._store = store
        self._clock = clock
        self._logged_at = -math.inf
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}

    def key(self, kind: str, value: str) -> str:
        return f"{self.name}.{key_for(kind, value)}"

    async def take(self, key: str) -> float:
        """0 when a token was taken, else the seconds until the next one. Fails open (0) when
        NATS does not answer."""
        try:
            async with self._turn(key):
                return await self._take(key)
        except LimiterUnavailable as exc:
            self._unavailable(exc)
            return 0.0

    async def check(self, key: str) -> float:
        """0 when the key has a token left (none is taken), else the seconds until the next
        one. Fails open (0) when NATS does not answer."""
        local = self._store.peek(key)
        if local is not None:
            state = local[0]
        else:
            try:
                state, _ = await self._store.load(key)
            except LimiterUnavailable as exc:
                self._unavailable(exc)
                return 0.0
        tokens, _ = refill(state, self._clock(), self.limit)
        return 0.0 if tokens >= 1.0 else wait_for(tokens, self.limit)

    async def check_all(self, keys: Sequence[str]) -> float:
        """0 when every key has a token left, else the longest wait. From the local copy when
        it is current; else the keys are read together (one round trip's wait for both of a
        checkout's, not one after the other)."""
        if len(keys) == 1 or all(self._store.peek(key) is not None for key in keys):
            return max([await self.check(key) for key in keys], default=0.0)
        return max(await asyncio.gather(*(self.check(key) for key in keys)), default=0.0)

    @contextlib.asynccontextmanager
    async def _turn(self, key: str) -> AsyncIterator[None]:
        """This process's takes of ``key`` one after another (see "Contention")."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                del self._locks[key]

    async def _take(self, key: str) -> float:
        for attempt in range(MAX_TRIES):
            state, revision = await self._store.load(key)
            tokens, at = refill(state, self._clock(), self.limit)
            if tokens < 1.0:
                return wait_for(tokens, self.limit)
            if await self._store.save(key, (tokens - 1.0, at), revision, self.limit.ttl):
                return 0.0
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        log.warning("limit %s: %d conflicting writes in a row; refused", self.name, MAX_TRIES)
        return 1.0

    async def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`take` (the attempt did not count after all)."""
        try:
            async with self._turn(key):
                await self._give_back(key)
        except LimiterUnavailable as exc:
            self._unavailable(exc)

    async def _give_back(self, key: str) -> None:
        for attempt in range(MAX_TRIES):
            state, revision = await self._store.load(key)
            if state is None:
                return  # expired: a full bucket already
            tokens, at = refill(state, self._clock(), self.limit)
            tokens = min(float(self.limit.burst), tokens + 1.0)
            if await self._store.save(key, (tokens, at), revision, self.limit.ttl):
                return
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))

    async def take_all(self, keys: Sequence[str]) -> float:
        """A token from each key, or none: 0 when all were taken, else the longest wait (the
        tokens already taken are given back)."""
        taken: list[str] = []
        for key in keys:
            wait = await self.take(key)
            if wait > 0:
                for done in taken:
                    await self.give_back(done)
                return wait
            taken.append(key)
        return 0.0

    async def count_all(self, keys: Sequence[str]) -> None:
        """A token from each key that has one left (a refusal counted against every key)."""
        for key in keys:
            await self.take(key)

    async def give_back_all(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self.give_back(key)

    def _unavailable(self, exc: LimiterUnavailable) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            log.warning("limit %s not checked (fails open): %s", self.name, exc)
