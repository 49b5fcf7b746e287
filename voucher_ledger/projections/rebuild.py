"""Rebuild a projection from sequence 1 while the service keeps serving reads.

1. A shadow schema ``rebuild_<name>`` gets fresh tables from the same migrations (same names,
   constraints and indexes), with its own checkpoint row.
   Its secondary indexes (not unique, not backing a constraint) are dropped, their definitions
   kept in the shadow schema, and built again in one pass once the replay is near the head.
2. The stream is replayed into it in big batches, each in one transaction with the shadow
   checkpoint, so an interrupted rebuild resumes where it stopped. Each batch goes in through
   the read model's one applier, the live projector's (``vouchers.py``, ``wallets.py``,
   ``audit.py``: rows folded in memory, written once per batch, ``COPY`` for new rows).
3. Near the head, one transaction locks the live checkpoint (the live projector waits on it),
   applies the last events, moves the live tables out and the shadow tables in, and sets the
   live checkpoint to the shadow's. Readers see the old rows until the commit, the new after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client

from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.projections.migrate import discover
from voucher_ledger.projections.model import Conn, PlainEvent, Projection, plain_event
from voucher_ledger.projections.replay import read_events, stream_head
from voucher_ledger.signing.chain import Checked
from voucher_ledger.signing.cutover import reader_checker

log = logging.getLogger(__name__)


class Progress:
    """What a rebuild reports as it goes (the CLI draws a bar from it)."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, events: int, total: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class RebuildSummary:
    projection: str
    resumed_from: int
    reached: int
    events: int
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)
    # Where the time went, in seconds: ``prepare`` (the shadows), ``replay``, ``keys`` (the
    # deferred indexes and constraints), ``swap``, ``drop`` (the old tables), ``count``.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Failed:
    exc: BaseException


async def prefetched(source: AsyncIterator[_T], depth: int = 1) -> AsyncGenerator[_T, None]:
    """``source``'s items, read (received and decoded) by a task of their own up to ``depth``
    items ahead: the next batch is decoded while PostgreSQL works on the previous one, instead
    of each side waiting for the other. Errors of the source surface here, in order; closing
    this iterator stops the reader."""
    queue: asyncio.Queue[_T | _Failed | None] = asyncio.Queue()  # bounded by ``slots``
    slots = asyncio.Semaphore(depth)

    async def produce() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
                await slots.acquire()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put_nowait(_Failed(exc))
        else:
            queue.put_nowait(None)

    task = asyncio.create_task(produce())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, _Failed):
                raise item.exc
            slots.release()
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _side_by_side(jobs: Iterable[Awaitable[_T]]) -> list[_T]:
    """The results of ``jobs`` run concurrently (each on its own connection); when some fail,
    the first error is raised once every job is over (no transaction is left half done)."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ident(name: str) -> str:
    """A quoted SQL identifier. Only names from the projection registry get here; the check
    makes sure nothing else ever does."""
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


def shadow_schema(projection: Projection) -> str:
    return f"rebuild_{projection.name}"


_DEFERRED = "rebuild_deferred_indexes"
# A transaction that writes only the shadow (its tables, keys and checkpoint) commits without
# waiting for its WAL to reach the disk: a crash can lose the last such commits, each whole
# (a batch's rows with the checkpoint that counts them, a key with its deferred entry's
# removal), and the resumed rebuild does that work again. The swap, which changes what
# readers see, commits as usual, and its flush covers every commit before it.
_SHADOW_ONLY = "; SET LOCAL synchronous_commit TO off"
# The indexes of some tables that back no constraint (secondary and unique ones).
_DEFERRABLE_INDEXES = """
SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1 AND t.relname = ANY($2::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
ORDER BY i.relname
"""
# The foreign keys, unique constraints and primary keys of some tables, except the primary keys
# of the tables in ``$3``; foreign keys first (they are dropped first: they may rest on a key).
_DEFERRABLE_CONSTRAINTS = """
SELECT c.conname AS name, t.relname AS table, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1 AND t.relname = ANY($2::text[]) AND c.contype IN ('f', 'u', 'p')
  AND NOT (c.contype = 'p' AND t.relname = ANY($3::text[]))
ORDER BY c.contype <> 'f', c.conname
"""


async def _prepare_shadow(conn: Conn, schema: str, projection: Projection) -> int:
    """Create the shadow schema and tables if missing, with their secondary indexes deferred;
    return its checkpoint. Every key, unique index and foreign key but the primary keys of
    ``projection.keyed`` (the tables whose primary key its applier looks rows up by) is deferred
    too: built after the load in one pass each, where a duplicate or a dangling reference fails
    the rebuild before the swap (as the live projector would have failed on that event)."""
    name = projection.name
    exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    if not exists:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {ident(schema)}")
            await conn.execute(f"SET LOCAL search_path TO {ident(schema)}{_SHADOW_ONLY}")
            for migration in discover():
                await conn.execute(migration.sql)
            await conn.execute(
                f"CREATE TABLE {ident(_DEFERRED)} (name text PRIMARY KEY, definition text NOT NULL)"
            )
            tables = list(projection.tables)
            deferred: list[tuple[str, str, str]] = []  # name, how to build it, how to drop it
            keyed = list(projection.keyed)
            for row in await conn.fetch(_DEFERRABLE_CONSTRAINTS, schema, tables, keyed):
                table, constraint = ident(row["table"]), ident(row["name"])
                deferred.append(
                    (
                        row["name"],
                        f"ALTER TABLE {table} ADD CONSTRAINT {constraint} {row['definition']}",
                        f"ALTER TABLE {table} DROP CONSTRAINT {constraint}",
                    )
                )
            for row in await conn.fetch(_DEFERRABLE_INDEXES, schema, tables):
                deferred.append(
                    (row["name"], row["definition"], f"DROP INDEX {ident(row['name'])}")
                )
            for index, build, drop in deferred:
                await conn.execute(
                    f"INSERT INTO {ident(_DEFERRED)} (name, definition) VALUES ($1, $2)",  # noqa: S608
                    index,
                    build,
                )
                await conn.execute(drop)
            await conn.execute("SET LOCAL search_path TO public")
        log.info("rebuild %s: shadow schema %s created", name, schema)
    table = f"{ident(schema)}.projection_checkpoints"
    await conn.execute(
        f"INSERT INTO {table} (projection) VALUES ($1) ON CONFLICT DO NOTHING",  # noqa: S608
        name,
    )
    sql = f"SELECT last_seq FROM {table} WHERE projection = $1"  # noqa: S608
    return int(await conn.fetchval(sql, name))


async def _restore_indexes(conn: Conn, schema: str) -> None:
    """Build the shadow's deferred indexes and constraints (one pass over the loaded rows
    each), foreign keys last, before its tables are swapped in. The shadow is the search path
    (the definitions name its tables unqualified). (No ANALYZE here: on the audit trail's
    jsonb it took longer than the index builds; autovacuum analyzes the new tables soon after
    the swap.)"""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {ident(schema)}{_SHADOW_ONLY}")
        deferred = await conn.fetch(f"SELECT name, definition FROM {ident(_DEFERRED)}")  # noqa: S608
        definitions = [str(r["definition"]) for r in deferred]
        for definition in sorted(definitions, key=lambda d: (" FOREIGN KEY " in d, d)):
            await conn.execute(definition)
        await conn.execute(f"DELETE FROM {ident(_DEFERRED)}")  # noqa: S608
        await conn.execute("SET LOCAL search_path TO public")


async def _hurry_autovacuum(conn: Conn) -> None:
    """For the swap's transaction: an autovacuum worker on a table the swap moves (the tables
    the previous swap or the live projector filled) holds the ALTER back until PostgreSQL's
    deadlock check cancels it, after ``deadlock_timeout`` (1 s) per table: 2.7 s of a 5.3 s
    rebuild, measured. Where this role may set it, the check comes after 50 ms instead."""
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the swap usable
            await conn.execute("SET LOCAL deadlock_timeout = '50ms'")
    except asyncpg.InsufficientPrivilegeError:
        log.debug("rebuild: deadlock_timeout not settable; the swap may wait for autovacuum")


async def _apply(
    conn: Conn,
    schema: str,
    projection: Projection,
    events: Sequence[PlainEvent],
    *,
    shadow_only: bool,
) -> None:
    """Apply one batch to the shadow tables with the shadow checkpoint (inside a transaction;
    ``shadow_only``: one that writes nothing else)."""
    await conn.execute(f"SET LOCAL search_path TO {ident(schema)}{_SHADOW_ONLY * shadow_only}")
    await projection.apply(conn, events)
    await conn.execute(
        "UPDATE projection_checkpoints SET last_seq = $2, updated_at = now() WHERE projection = $1",
        projection.name,
        events[-1].seq,
    )
    await conn.execute("SET LOCAL search_path TO public")


async def rebuild(
    pool: asyncpg.Pool,
    nc: Client,
    spec: StreamsSpec,
    projection: Projection | Sequence[Projection],
    *,
    progress: Progress | None = None,
    batch: int = 10_000,
    swap_within: int = 2000,
    public_key: Ed25519PublicKey | None = None,
) -> RebuildSummary:
    """Rebuild one projection, or several in ONE pass over the stream, swapped in together.
    Each shadow has its own checkpoint: when the pool has a connection for each besides this
    one, a batch is applied to the shadows concurrently, each in its own transaction (so
    PostgreSQL works on them side by side), else to all in one transaction.

    With ``public_key``, every event is checked before it is applied (``voucher_ledger.signing``);
    the first that fails raises :class:`IntegrityError` (naming its stream sequence) and
    nothing is swapped in."""
    chosen = [projection] if not isinstance(projection, Sequence) else list(projection)
    bar = progress or Progress()
    started = time.perf_counter()
    label = "+".join(p.name for p in chosen)
    steps: dict[str, float] = {}
    lap = started

    def step(name: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        steps[name] = now - lap
        lap = now

    async def apply_all(
        conn: Conn,
        events: list[PlainEvent],
        floor: dict[str, int],
        *,
        shadow_only: bool,
    ) -> None:
        for p in chosen:
            todo = [e for e in events if e.seq > floor[p.name]]
            if todo:
                await _apply(conn, shadow_schema(p), p, todo, shadow_only=shadow_only)
                floor[p.name] = todo[-1].seq

    async def apply_one(conn: Conn, p: Projection, events: list[PlainEvent]) -> None:
        todo = (
            events
            if events[0].seq > floor[p.name]
            else [e for e in events if e.seq > floor[p.name]]
        )
        if todo:
            async with conn.transaction():
                await _apply(conn, shadow_schema(p), p, todo, shadow_only=True)
            floor[p.name] = todo[-1].seq

    async def apply_side_by_side(workers: list[Conn], events: list[PlainEvent]) -> None:
        await _side_by_side(apply_one(w, p, events) for w, p in zip(workers, chosen, strict=True))

    async with pool.acquire() as conn, contextlib.AsyncExitStack() as stack:
        workers: list[Conn] = []
        if len(chosen) > 1 and pool.get_max_size() > len(chosen):
            workers = [await stack.enter_async_context(pool.acquire()) for _ in chosen]
        # The shadows are made (and at the end keyed) on the workers side by side, when there
        # are workers: PostgreSQL builds one shadow's indexes while it builds another's.
        makers = workers or [conn] * len(chosen)
        if workers:
            made = await _side_by_side(
                _prepare_shadow(w, shadow_schema(p), p) for w, p in zip(makers, chosen, strict=True)
            )
        else:
            made = [await _prepare_shadow(conn, shadow_schema(p), p) for p in chosen]
        floor = {p.name: last for p, last in zip(chosen, made, strict=True)}
        reached = min(floor.values())
        resumed_from = reached
        head = await stream_head(nc, spec)
        checker = None
        if public_key is not None:
            checker = await reader_checker(
                nc, spec.event_stream, spec.layout, public_key, reached + 1
            )

        async def checked(events: list[PlainEvent]) -> list[PlainEvent]:
            if checker is not None:
                await checker.check(
                    [
                        Checked(e.seq, e.raw.encode(), e.doc["aggregate"], e.doc["aggregate_id"])
                        for e in events
                    ]
                )
            return events

        step("prepare")
        bar.start(head, reached)
        # Replay into the shadows until close enough to the head to swap quickly.
        while head - reached > swap_within:
            source = read_events(
                nc, spec, reached + 1, until_seq=head, batch=batch, make=plain_event
            )
            async with contextlib.aclosing(prefetched(source)) as batches:
                async for events in batches:
                    await checked(events)
                    if workers:
                        await apply_side_by_side(workers, events)
                    else:
                        async with conn.transaction():
                            await apply_all(conn, events, floor, shadow_only=True)
                    reached = events[-1].seq
                    bar.advance(len(events), head)
            head = await stream_head(nc, spec)
        step("replay")
        # Each shadow's keys in its own transaction: when one fails (a duplicate, a dangling
        # reference) the others are kept, and the failed one is built again on the next run.
        if workers:
            await _side_by_side(
                _restore_indexes(w, shadow_schema(p)) for w, p in zip(makers, chosen, strict=True)
            )
        else:
            for p in chosen:
                await _restore_indexes(conn, shadow_schema(p))
        await stack.aclose()  # the workers go back to the pool
        step("keys")
        # The swap: the live projector blocks on the checkpoint rows until this commits. They
        # are locked in name order, as the projector locks them, so the two cannot deadlock.
        names = sorted(p.name for p in chosen)
        async with conn.transaction():
            await _hurry_autovacuum(conn)
            await conn.execute(
                "INSERT INTO projection_checkpoints (projection) SELECT unnest($1::text[]) "
                "ON CONFLICT DO NOTHING",
                names,
            )
            await conn.execute(
                "SELECT last_seq FROM projection_checkpoints WHERE projection = ANY($1::text[]) "
                "ORDER BY projection FOR UPDATE",
                names,
            )
            head = await stream_head(nc, spec)
            tail = read_events(nc, spec, reached + 1, until_seq=head, batch=batch, make=plain_event)
            async for events in tail:
                await apply_all(conn, await checked(events), floor, shadow_only=False)
                reached = events[-1].seq
                bar.advance(len(events), head)
            for p in chosen:
                schema = shadow_schema(p)
                old = f"{schema}_old"
                await conn.execute(f"DROP SCHEMA IF EXISTS {ident(old)} CASCADE")
                await conn.execute(f"CREATE SCHEMA {ident(old)}")
                for table in p.tables:
                    await conn.execute(f"ALTER TABLE public.{ident(table)} SET SCHEMA {ident(old)}")
                    await conn.execute(
                        f"ALTER TABLE {ident(schema)}.{ident(table)} SET SCHEMA public"
                    )
                await conn.execute(
                    "UPDATE projection_checkpoints SET last_seq = $2, updated_at = now() "
                    "WHERE projection = $1",
                    p.name,
                    reached,
                )
        step("swap")
        for p in chosen:
            schema = shadow_schema(p)
            await conn.execute(f"DROP SCHEMA {ident(schema + '_old')} CASCADE")
            await conn.execute(f"DROP SCHEMA {ident(schema)} CASCADE")
        step("drop")
        rows: dict[str, Any] = {}
        for p in chosen:
            for table in p.tables:
                sql = f"SELECT count(*) FROM public.{ident(table)}"  # noqa: S608
                rows[table] = int(await conn.fetchval(sql))
    step("count")
    bar.close()
    seconds = time.perf_counter() - started
    log.info(
        "rebuild %s: %s", label, ", ".join(f"{name} {secs:.3f}s" for name, secs in steps.items())
    )
    return RebuildSummary(
        projection=label,
        resumed_from=resumed_from,
        reached=reached,
        events=reached - resumed_from,
        seconds=seconds,
        rows=rows,
        steps=steps,
    )
