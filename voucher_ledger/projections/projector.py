"""Projectors: durable consumers of the event stream that keep the Postgres read models.

Each fetched batch is applied in ONE transaction together with the projector's checkpoint (the
last stream sequence applied). The checkpoint row is locked (``FOR UPDATE``) first, events at or
below it are skipped (re-delivery is harmless), and a gap (the next event is not checkpoint+1)
aborts the batch and restarts the consumer from the checkpoint: the position lives in Postgres,
never in the broker. Only the holder of the projector's lease runs it (one per name).

Each batch's events are decoded into plain dicts (``model.plain_event``) and given to each read
model's one applier (``vouchers.py``, ``wallets.py``, ``audit.py``: the batch folded in memory,
each table written with a few statements whatever the batch's size), the same a rebuild uses.
The reads the read models announce (``wants``) go first, all in one query, and their writes
together in one statement before the commit (``prefetch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import asyncpg
import asyncpg.pool
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.aio.msg import Msg

from voucher_ledger.jetstream.api import JetStreamApiError, js_api
from voucher_ledger.jetstream.pulls import PullLoop, stream_sequence
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.projections.model import Conn, PlainEvent, Projection, plain_event
from voucher_ledger.projections.prefetch import Batched, Prefetching, Want
from voucher_ledger.signing.chain import Checked, StreamChecker
from voucher_ledger.signing.cutover import reader_checker
from voucher_ledger.signing.proof import IntegrityError

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

# Retry pauses of a failing projector, and how often a lasting failure is logged (seconds).
RETRY_MIN, RETRY_MAX, OUTAGE_LOG_EVERY = 0.5, 5.0, 60.0
CUTOVER_WAIT = 30.0  # seconds a projector waits for the signing cut-over before failing


_ADVANCE = """
UPDATE projection_checkpoints SET last_seq = $2, updated_at = now()
WHERE projection = $1 AND last_seq = $3
RETURNING last_seq
"""


class GapError(RuntimeError):
    pass


class CutoverNotRecorded(RuntimeError):
    """The processors have not recorded the signing cut-over yet: the projector waits."""


@dataclass(frozen=True)
class Stop:
    """Where and why a projection stopped: an event that fails the signature check."""

    seq: int
    code: str
    reason: str


class ProjectionStatus:
    """Where each projection is; ``wait_for(seq)`` is read-your-writes for the HTTP layer."""

    def __init__(self, pool: asyncpg.Pool, names: Sequence[str]) -> None:
        self._pool = pool
        self.applied: dict[str, int] = dict.fromkeys(names, 0)
        # name -> last error, while a projector keeps failing (a poison event or an outage)
        self.failing: dict[str, str] = {}
        # name -> the event it stopped on (it fails the signature check): not retried
        self.stopped: dict[str, Stop] = {}
        # name -> (when the failures began, when one was last logged, how many in a row)
        self._outages: dict[str, tuple[float, float, int]] = {}
        # (seq, ticket, waiter) of the waiting writers, lowest seq first: a projector's
        # progress wakes only the writers it satisfied (not every waiter on every batch).
        self._waiters: list[tuple[int, int, _Waiter]] = []
        self._tickets = itertools.count()
        self._last_refresh = 0.0

    def failed(self, name: str, exc: BaseException, members: Sequence[str] | None = None) -> float:
        """Record a failed attempt of projector ``name`` (an outage or a poison event), which
        stops its projections ``members`` (default: the one of that name), and return how long
        to pause before the next one: 0.5 s doubling to 5 s. The first failure is logged, then
        one line a minute while it lasts, so an outage does not flood the log."""
        for member in members or (name,):
            self.failing[member] = type(exc).__name__
        now = time.monotonic()
        began, logged, count = self._outages.get(name, (now, 0.0, 0))
        if count == 0:
            log.warning("projection %s stopped: %r; retrying", name, exc)
            logged = now
        elif now - logged >= OUTAGE_LOG_EVERY:
            log.warning("projection %s still failing after %.0f s: %r", name, now - began, exc)
            logged = now
        self._outages[name] = (began, logged, count + 1)
        return float(min(RETRY_MAX, RETRY_MIN * 2**count))

    def stop(self, name: str, members: Sequence[str], error: IntegrityError) -> None:
        """Projector ``name`` stopped on an event that fails the signature check: its
        projections ``members`` apply nothing more (logged once, here)."""
        stop = Stop(error.seq, error.code, error.reason)
        for member in members:
            self.stopped[member] = stop
        log.error("projection %s STOPPED, nothing more is applied: %s", name, error)

    def succeeded(self, name: str, members: Sequence[str] | None = None) -> None:
        for member in members or (name,):
            self.failing.pop(member, None)
        outage = self._outages.pop(name, None)
        if outage is not None:
            log.info("projection %s resumed after %.1f s", name, time.monotonic() - outage[0])

    def advance(self, name: str, seq: int) -> None:
        if seq > self.applied.get(name, 0):
            self.applied[name] = seq
            waiters = self._waiters
            if waiters and waiters[0][0] <= seq:
                low = self.low_water
                while waiters and waiters[0][0] <= low:
                    heapq.heappop(waiters)[2].wake()

    async def refresh(self) -> None:
        # Claimed before the query: the writers waiting meanwhile do not query too.
        self._last_refresh = time.monotonic()
        rows = await self._pool.fetch("SELECT projection, last_seq FROM projection_checkpoints")
        for row in rows:
            if row["projection"] in self.applied:
                self.advance(row["projection"], int(row["last_seq"]))
        self._last_refresh = time.monotonic()

    @property
    def low_water(self) -> int:
        return min(self.applied.values()) if self.applied else 0

    async def wait_for(self, seq: int, timeout: float) -> bool:
        """True once every projection has applied ``seq``; False after ``timeout``."""
        if self.low_water >= seq:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiter = _Waiter()
        if len(self._waiters) > _MAX_WAITERS:  # drop the entries of writers that gave up
            self._waiters = [w for w in self._waiters if not w[2].gone]
            heapq.heapify(self._waiters)
        heapq.heappush(self._waiters, (seq, next(self._tickets), waiter))
        try:
            while self.low_water < seq:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                # Woken by advance(), or after 50 ms to look at Postgres: another instance
                # may hold the projector lease, and its progress is only there.
                await waiter.sleep(loop, min(remaining, 0.05))
                if self.low_water < seq and time.monotonic() - self._last_refresh > 0.05:
                    with contextlib.suppress(Exception):
                        await self.refresh()
            return True
        finally:
            waiter.gone = True


_MAX_WAITERS = 10_000


class _Waiter:
    """One writer waiting for its write to reach the read models."""

    __slots__ = ("fut", "gone")

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None
        self.gone = False

    def wake(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.fut = fut = loop.create_future()
        timer = loop.call_later(seconds, self.wake)
        try:
            await fut
        finally:
            timer.cancel()
            self.fut = None


_LOCK_AND_ADVANCE = """
WITH cur AS (
    SELECT projection, last_seq FROM projection_checkpoints
    WHERE projection = ANY($1::text[]) ORDER BY projection FOR UPDATE
), moved AS (
    UPDATE projection_checkpoints AS p SET last_seq = $2, updated_at = now()
    FROM cur WHERE p.projection = cur.projection AND cur.last_seq = $3
    RETURNING p.projection
)
SELECT projection, last_seq FROM cur
"""

# The usual case, sent with BEGIN by the simple protocol (no parameters: {names} are the
# projector's constant projection names, {last} and {before} integers): every checkpoint that
# stands right before the batch moves to its end; all are locked in name order until the commit;
# the status ``UPDATE <n>`` says how many moved.
_MOVE_ALL = """
WITH cur AS (
    SELECT projection, last_seq FROM projection_checkpoints
    WHERE projection IN ({names}) ORDER BY projection FOR UPDATE
)
UPDATE projection_checkpoints AS p SET last_seq = {last}, updated_at = now()
FROM cur WHERE p.projection = cur.projection AND cur.last_seq = {before}
"""

READ_MODELS = "read_models"

# How often the projector acknowledges what it applied (seconds), and after how many events at
# the latest. The position lives in Postgres (a restart recreates the consumer from the
# checkpoint), so an acknowledgement only keeps the consumer from delivering again after its
# ack_wait (30 s) and under its max_ack_pending (10,000): one AckAll for many batches does
# that, where one per batch was a NATS message per checkout (issue #19).
ACK_EVERY = 0.25
ACK_AFTER = 1_000


class _Acks:
    """The last applied delivery not acknowledged yet, acknowledged (AckAll: everything up to
    it) once it is ``ACK_EVERY`` old, ``ACK_AFTER`` events have piled up, or the stream is
    quiet."""

    __slots__ = ("_count", "_last", "_since")

    def __init__(self) -> None:
        self._last: Msg | None = None
        self._count = 0
        self._since = 0.0

    def applied(self, msg: Msg, count: int) -> None:
        if self._last is None:
            self._since = time.monotonic()
        self._last = msg
        self._count += count

    async def send_if_due(self, *, idle: bool) -> None:
        last = self._last
        if last is None:
            return
        if idle or self._count >= ACK_AFTER or time.monotonic() - self._since >= ACK_EVERY:
            self._last, self._count = None, 0
            await last.ack()


# The read models are the stream's derivatives, so their commits need not wait for the WAL
# flush: a PostgreSQL crash can lose the last few hundred milliseconds of them, checkpoints
# included (never one without the other: atomic), and the projector applies those events again
# from the stream. The ledger's durability is the event stream's fsync'd append (issue #19).
#
# Its statements are planned once per connection, not at every execution (a custom plan for
# each batch's arrays cost more than running them): the reads and writes by key, and writes
# from arrays, which a generic plan serves as well.
_ASYNC_COMMIT = (
    "SET LOCAL synchronous_commit TO off; SET LOCAL plan_cache_mode TO force_generic_plan"
)


class Projector:
    """One durable consumer feeding one or several projections: each batch is applied to all
    of them in ONE transaction, each with its own checkpoint (its own position in the stream,
    so one can be rebuilt alone). The checkpoint rows are locked in name order, as a rebuild's
    swap locks them, so the two never deadlock."""

    def __init__(
        self,
        nc: Client,
        pool: asyncpg.Pool,
        spec: StreamsSpec,
        projection: Projection | Sequence[Projection],
        status: ProjectionStatus,
        *,
        name: str | None = None,
        batch: int = 500,
        public_key: Ed25519PublicKey | None = None,
    ) -> None:
        """``public_key``: every event is checked with it (and the stream's signing cut-over)
        before it is applied; one that fails stops the projector (None: no check, tests)."""
        self.projections: tuple[Projection, ...] = (
            tuple(projection) if isinstance(projection, Sequence) else (projection,)
        )
        if not self.projections:
            raise ValueError("a projector needs at least one projection")
        self.name = name or (
            self.projections[0].name if len(self.projections) == 1 else READ_MODELS
        )
        self._names = [p.name for p in self.projections]
        self._nc = nc
        self._pool = pool
        self._spec = spec
        self._status = status
        self._batch = batch
        self.durable = f"{spec.layout.upper}_PROJ_{self.name.upper()}"
        self.batches = 0
        self._stopped = False
        self._halt = asyncio.Event()
        # how a message body becomes the events the read models' appliers take
        self.decode: Callable[[int, bytes], PlainEvent] = plain_event
        self._appliers = [p.apply for p in self.projections]
        # the read models that announce their reads (projections/prefetch.py)
        self._wants: list[Callable[[Sequence[PlainEvent]], list[Want]]] = [
            p.wants for p in self.projections if isinstance(p, Prefetching)
        ]
        self._conn: Conn | None = None  # held by the running loop
        self._public_key = public_key
        self.checker: StreamChecker | None = None
        # BEGIN and the usual checkpoint move in one round trip (see _MOVE_ALL): formatted with
        # the batch's bounds, or (on the run loop's connection, issue #19) prepared once there
        # and executed with them; that connection and the statement's name.
        move = _MOVE_ALL.replace("{names}", ", ".join(f"'{n}'" for n in self._names))
        safe = all(_SAFE_NAME.match(n) for n in self._names)
        self._begin_sql = f"BEGIN; {_ASYNC_COMMIT}; {move}" if safe else None
        self._move_sql = move.replace("{last}", "$1").replace("{before}", "$2")
        self._moved_all = f"UPDATE {len(self._names)}"
        self._prepared: tuple[Conn, str] | None = None

    def stop(self) -> None:
        self._stopped = True
        self._halt.set()

    async def checkpoint(self) -> int:
        """The lowest checkpoint of this projector's projections (where its consumer starts);
        creates the missing checkpoint rows."""
        await self._pool.execute(
            "INSERT INTO projection_checkpoints (projection) SELECT unnest($1::text[]) "
            "ON CONFLICT DO NOTHING",
            self._names,
        )
        rows = await self._pool.fetch(
            "SELECT projection, last_seq FROM projection_checkpoints "
            "WHERE projection = ANY($1::text[])",
            self._names,
        )
        for row in rows:
            self._status.advance(row["projection"], int(row["last_seq"]))
        return min(int(row["last_seq"]) for row in rows)

    async def _recreate_consumer(self, start_seq: int) -> None:
        stream = self._spec.event_stream
        with contextlib.suppress(JetStreamApiError):  # none to delete: its answer was ignored
            await js_api(self._nc, f"CONSUMER.DELETE.{stream}.{self.durable}")
        config = {
            **self._spec.projector_consumer(self.name),
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": start_seq,
        }
        body = {"stream_name": stream, "config": config}
        await js_api(self._nc, f"CONSUMER.CREATE.{stream}.{self.durable}", body)

    async def run(self) -> None:
        while not self._stopped:
            try:
                await self._run_once()
            except IntegrityError as exc:
                self._status.stop(self.name, self._names, exc)
                await self._stay_stopped()
                return
            except GapError as exc:
                log.warning("projection %s: %s; restarting from checkpoint", self.name, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres or NATS outage: retry
                await asyncio.sleep(self._status.failed(self.name, exc, self._names))

    async def _stay_stopped(self) -> None:
        """Hold the lease, apply nothing, until told to stop (another instance would only stop
        on the same event)."""
        await self._halt.wait()

    async def _start_checker(self, start_seq: int) -> None:
        if self._public_key is None or self.checker is not None:
            return
        stream = self._spec.event_stream
        # The processors record the cut-over when they first start, maybe just after this
        # projector: wait for it quietly a while before reporting a failure.
        deadline = time.monotonic() + CUTOVER_WAIT
        while True:
            self.checker = await reader_checker(
                self._nc,
                stream,
                self._spec.layout,
                self._public_key,
                start_seq,
                strict=False,
                capacity=100_000,
            )
            if self.checker is not None:
                return
            if self._stopped or time.monotonic() > deadline:
                raise CutoverNotRecorded(f"{stream}: no signing cut-over recorded yet")
            await asyncio.sleep(0.2)

    async def _run_once(self) -> None:
        last = await self.checkpoint()
        await self._start_checker(last + 1)
        await self._recreate_consumer(last + 1)
        pulls = PullLoop(
            self._nc, self._spec.event_stream, self.durable, batch=self._batch, expires=0.5
        )
        await pulls.start()
        try:
            # One connection for the loop's batches: a pool release costs a round trip (its
            # reset query) per batch. A failure ends the loop, and the pool replaces a broken
            # connection at the next start.
            async with self._pool.acquire() as conn:
                self._conn = conn
                await self._prepare_move(conn)
                acks = _Acks()
                while not self._stopped:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError
                    msgs = await pulls.next(timeout=ACK_EVERY)
                    if msgs:
                        await self.apply_messages(msgs, ack=False)
                        acks.applied(msgs[-1], len(msgs))
                    await acks.send_if_due(idle=not msgs)
        finally:
            self._conn = None
            self._prepared = None
            with contextlib.suppress(Exception):
                await pulls.stop()

    async def _prepare_move(self, conn: Conn) -> None:
        """Prepare the checkpoint move on ``conn`` (a name of its own: the connection goes
        back to the pool with it when the loop ends)."""
        if self._begin_sql is None:
            return
        name = f"vl_move_{os.urandom(6).hex()}"
        await conn.execute(f"PREPARE {name} (bigint, bigint) AS {self._move_sql}")
        self._prepared = (conn, name)

    async def apply_messages(self, msgs: Sequence[Msg], *, ack: bool = True) -> int:
        """Check and apply a batch of deliveries; acknowledge it unless ``ack`` is False (the
        run loop acknowledges in :class:`_Acks`' rhythm)."""
        decode = self.decode
        events = [decode(stream_sequence(m), m.data) for m in msgs]
        checker = self.checker
        if checker is not None:
            try:
                await checker.check(
                    [
                        Checked(e.seq, m.data, e.doc["aggregate"], e.doc["aggregate_id"])
                        for e, m in zip(events, msgs, strict=True)
                    ]
                )
            except IntegrityError as exc:
                # The events before it are applied; it and everything after it never are.
                good = [e for e in events if e.seq < exc.seq]
                if good:
                    await self.apply(good)
                raise
        reached = await self.apply(events)
        if ack:
            await msgs[-1].ack()  # AckAll: acknowledges the whole batch
        return reached

    async def apply(self, events: Sequence[PlainEvent]) -> int:
        """Apply one batch (of events made by ``self.decode``) to every projection with its
        checkpoint, in one transaction. Returns the lowest checkpoint after it."""
        first, last = events[0].seq, events[-1].seq
        if self._conn is not None:
            reached = await self._apply_on(self._conn, events, first, last)
        else:
            async with self._pool.acquire() as conn:
                reached = await self._apply_on(conn, events, first, last)
        self.batches += 1
        status = self._status
        status.succeeded(self.name, self._names)
        for name, seq in reached.items():
            status.advance(name, seq)
        return min(reached.values())

    async def _apply_on(
        self, conn: Conn, events: Sequence[PlainEvent], first: int, last: int
    ) -> dict[str, int]:
        reached = await self._apply_usual(conn, events, first, last)
        if reached is None:
            async with conn.transaction():
                await conn.execute(_ASYNC_COMMIT)
                reached = await self._apply_locked(conn, events, first, last)
        return reached

    async def _apply_usual(
        self, conn: Conn, events: Sequence[PlainEvent], first: int, last: int
    ) -> dict[str, int] | None:
        """The usual batch (every checkpoint right before it) in its own transaction, whose
        BEGIN travels with the checkpoint move; None (nothing done) for any other batch."""
        begin = self._begin_sql
        if begin is None:
            return None
        try:
            prepared = self._prepared
            if prepared is not None and prepared[0] is conn:
                moved = await conn.execute(
                    f"BEGIN; {_ASYNC_COMMIT}; EXECUTE {prepared[1]}({int(last)}, {int(first) - 1})"
                )
            else:
                moved = await conn.execute(begin.format(last=int(last), before=int(first) - 1))
            if moved != self._moved_all:
                await conn.execute("ROLLBACK")
                return None
            # The reads announced in one round trip, the writes in one more (prefetch.py).
            batched = Batched(conn)
            await batched.load([w for wants in self._wants for w in wants(events)])
            target = cast(Conn, batched)  # fetch, execute and COPY batched, the rest passed on
            for apply in self._appliers:
                await apply(target, events)
            await batched.flush()
            await conn.execute("COMMIT")
        except BaseException:
            if conn.is_in_transaction():
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise
        return dict.fromkeys(self._names, last)

    async def _apply_locked(
        self, conn: Conn, events: Sequence[PlainEvent], first: int, last: int
    ) -> dict[str, int]:
        """Any batch, inside the caller's transaction: each projection gets the events above
        its own checkpoint."""
        # Every checkpoint right before the batch moves to its end in this round trip (locked
        # until the commit); the others are moved below.
        rows = await conn.fetch(_LOCK_AND_ADVANCE, self._names, last, first - 1)
        found = {row["projection"]: int(row["last_seq"]) for row in rows}
        reached: dict[str, int] = {}
        for projection, apply in zip(self.projections, self._appliers, strict=True):
            at = found.get(projection.name)
            if at is None:
                raise GapError(f"no checkpoint row for projection {projection.name}")
            if at == first - 1:
                await apply(conn, events)
                reached[projection.name] = last
                continue
            # Behind or ahead of the batch (a redelivery, or one projection rebuilt alone).
            todo = [e for e in events if e.seq > at]
            if todo and todo[0].seq != at + 1:
                raise GapError(f"{projection.name}: expected seq {at + 1}, got {todo[0].seq}")
            if todo:
                await conn.execute(_ADVANCE, projection.name, last, at)
                await apply(conn, todo)
            reached[projection.name] = max(at, last) if todo else at
        return reached
