"""The hub's read model of its Sovereigns' trail (issue #22, deliverable 3).

The trail projector reads the hub's trail stream ``<PREFIX>_SOVEREIGNS`` (not the event
stream) with a durable consumer of its own and applies each Sovereign's ``voucher.redeemed``
and ``voucher.redemption_reversed`` (every code, global or not) to ``sovereign_redemptions``;
``sovereign_trail_status`` keeps, per Sovereign, the trail sequence of the last of its events
applied and how many. The projector's checkpoint is the highest of those sequences: every
batch is applied in one transaction that first takes an advisory lock, reads the checkpoint,
skips the events at or below it (a redelivery after a crash changes nothing) and refuses a
gap (the consumer restarts from the checkpoint). The envelopes are the Sovereigns' own,
signed with keys the hub does not hold: they are not checked here.

It runs only on a hub with Sovereigns (``HUB=true``, ``SOVEREIGNS``), under its own lease
(``projector.sovereign_trail``). :func:`rebuild_trail` (``voucher-ledger rebuild`` at a hub)
replays the whole trail into the tables in one transaction, under the same lock: readers see
the old rows until it commits, the live projector waits for it and carries on after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg

from voucher_ledger.jetstream.api import JetStreamApiError, js_api
from voucher_ledger.jetstream.leases import LeaseHost, stop_worker
from voucher_ledger.ledger.events import RedemptionReversed, VoucherRedeemed
from voucher_ledger.projections.model import Conn
from voucher_ledger.projections.trail_fold import (
    CodeFigures,
    TrailEvent,
    redemption_row,
    trail_event,
)

log = logging.getLogger(__name__)

NAME = "sovereign_trail"
TABLES = ("sovereign_redemptions", "sovereign_trail_status")
LEASE_KEY = f"projector.{NAME}"
_LOCK_KEY = 0x766C7472  # "vltr": one writer of the trail's tables at a time
RETRY_MIN, RETRY_MAX = 0.5, 5.0

COLUMNS = (
    "sovereign",
    "code",
    "customer_id",
    "redemption_id",
    "user_id",
    "credit_baisa",
    "redeemed_at",
    "reversed_at",
    "trail_seq",
    "reversed_trail_seq",
)
_TYPES = (
    "text",
    "text",
    "text",
    "text",
    "text",
    "bigint",
    "timestamptz",
    "timestamptz",
    "bigint",
    "bigint",
)
_INSERT = (
    f"INSERT INTO sovereign_redemptions ({', '.join(COLUMNS)}) "  # noqa: S608 - constants
    f"SELECT * FROM unnest({', '.join(f'${i}::{t}[]' for i, t in enumerate(_TYPES, 1))}) "
    "ON CONFLICT (sovereign, redemption_id) DO NOTHING"
)
_REVERSE = """
UPDATE sovereign_redemptions AS r SET reversed_at = d.at, reversed_trail_seq = d.seq
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS d(sovereign, rid, at, seq)
WHERE r.sovereign = d.sovereign AND r.redemption_id = d.rid AND r.reversed_at IS NULL
"""
_STATUS = """
INSERT INTO sovereign_trail_status (sovereign, last_seq, events)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
ON CONFLICT (sovereign) DO UPDATE SET
    last_seq = GREATEST(sovereign_trail_status.last_seq, EXCLUDED.last_seq),
    events = sovereign_trail_status.events + EXCLUDED.events,
    updated_at = now()
"""
CHECKPOINT = "SELECT coalesce(max(last_seq), 0) FROM sovereign_trail_status"


class TrailGap(RuntimeError):
    pass


def trail_stream(prefix: str) -> str:
    return f"{prefix.upper()}_SOVEREIGNS"  # as service/federation.trail_stream


def durable_name(prefix: str) -> str:
    return f"{prefix.upper()}_TRAIL_PROJ"


async def apply_trail(conn: Conn, events: Sequence[TrailEvent]) -> None:
    """Apply trail events (in trail order, above the checkpoint) inside the caller's
    transaction: the redemptions as new rows, the reversals as marks, the status per
    Sovereign."""
    new: dict[tuple[str, str], dict[str, Any]] = {}
    reversals: dict[tuple[str, str], tuple[Any, int]] = {}
    status: dict[str, list[int]] = {}
    for e in events:
        mine = status.setdefault(e.sovereign, [0, 0])
        mine[0] = max(mine[0], e.seq)
        mine[1] += 1
        if e.envelope is None:
            continue
        event, at = e.envelope.event, e.envelope.occurred_at
        if isinstance(event, VoucherRedeemed):
            key = (e.sovereign, event.redemption_id)
            if key not in new:
                new[key] = redemption_row(e.sovereign, e.seq, at, event)
        elif isinstance(event, RedemptionReversed):
            key = (e.sovereign, event.redemption_id)
            row = new.get(key)
            if row is not None:
                if row["reversed_at"] is None:
                    row["reversed_at"], row["reversed_trail_seq"] = at, e.seq
            elif key not in reversals:
                reversals[key] = (at, e.seq)
    if new:
        rows = list(new.values())
        await conn.execute(_INSERT, *([r[c] for r in rows] for c in COLUMNS))
    if reversals:
        keys = list(reversals)
        await conn.execute(
            _REVERSE,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [reversals[k][0] for k in keys],
            [reversals[k][1] for k in keys],
        )
    if status:
        names = sorted(status)
        await conn.execute(
            _STATUS, names, [status[n][0] for n in names], [status[n][1] for n in names]
        )


async def apply_batch(conn: Conn, events: Sequence[TrailEvent]) -> int:
    """One batch in one transaction, under the trail's lock; returns the checkpoint after it.
    Events at or below the checkpoint are skipped; a gap raises :class:`TrailGap`."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        at = int(await conn.fetchval(CHECKPOINT))
        todo = [e for e in events if e.seq > at]
        if not todo:
            return at
        if todo[0].seq != at + 1:
            raise TrailGap(f"{NAME}: expected trail seq {at + 1}, got {todo[0].seq}")
        await apply_trail(conn, todo)
        return todo[-1].seq


def decode_messages(prefix: str, msgs: Sequence[Msg]) -> list[TrailEvent]:
    out = []
    for m in msgs:
        seq = m.metadata.sequence.stream
        event = trail_event(prefix, seq, m.subject, m.data)
        if event is None:
            raise ValueError(f"trail seq {seq}: subject {m.subject!r} names no Sovereign")
        out.append(event)
    return out


class TrailProjector:
    """The durable consumer of the trail feeding the trail's read model."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, prefix: str, *, batch: int = 500) -> None:
        self._nc = nc
        self._pool = pool
        self._prefix = prefix
        self._batch = batch
        self.stream = trail_stream(prefix)
        self.durable = durable_name(prefix)
        self.applied = 0  # the checkpoint, as far as this projector knows
        self.failing: str | None = None  # the last error's type, while failing
        self._failures = 0
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def checkpoint(self) -> int:
        return int(await self._pool.fetchval(CHECKPOINT))

    async def run(self) -> None:
        while not self._stopped:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except TrailGap as exc:
                log.warning("%s; restarting from the checkpoint", exc)
                await asyncio.sleep(RETRY_MIN)
            except Exception as exc:  # noqa: BLE001 - Postgres or NATS outage: retry
                if self.failing is None:
                    log.warning("projection %s stopped: %r; retrying", NAME, exc)
                self.failing = type(exc).__name__
                self._failures += 1
                await asyncio.sleep(min(RETRY_MAX, RETRY_MIN * 2 ** min(self._failures, 8)))

    async def _recreate_consumer(self, start_seq: int) -> None:
        stream, durable = self.stream, self.durable
        with contextlib.suppress(JetStreamApiError):  # none to delete
            await js_api(self._nc, f"CONSUMER.DELETE.{stream}.{durable}")
        config = {
            "durable_name": durable,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": start_seq,
            "filter_subject": f"{self._prefix}.sovereign.>",
            "ack_policy": "all",
            "ack_wait": 30_000_000_000,
            "max_deliver": -1,
            "max_ack_pending": 10_000,
        }
        body = {"stream_name": stream, "config": config}
        await js_api(self._nc, f"CONSUMER.CREATE.{stream}.{durable}", body)

    async def _run_once(self) -> None:
        self.applied = await self.checkpoint()
        await self._recreate_consumer(self.applied + 1)
        sub = await self._nc.jetstream().pull_subscribe_bind(
            durable=self.durable, stream=self.stream
        )
        if self.failing is not None:  # Postgres and NATS answered again
            log.info("projection %s resumed", NAME)
            self.failing, self._failures = None, 0
        try:
            while not self._stopped:
                try:
                    msgs = await sub.fetch(self._batch, timeout=0.5)
                except TimeoutError:  # an empty pull (nats.py's TimeoutError is one)
                    continue
                if msgs:
                    await self.apply_messages(msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def apply_messages(self, msgs: Sequence[Msg]) -> int:
        events = decode_messages(self._prefix, msgs)
        async with self._pool.acquire() as conn:
            self.applied = await apply_batch(conn, events)
        await msgs[-1].ack()  # AckAll: the whole batch
        return self.applied


class TrailProjectorHost(LeaseHost):
    """Runs the trail projector while this instance holds its lease."""

    def __init__(
        self,
        nc: Client,
        pool: asyncpg.Pool,
        prefix: str,
        lease_bucket: str,
        lease_ttl: float,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(
            nc, lease_bucket, lease_ttl, instance_id or uuid.uuid4().hex[:12], "trail-projector"
        )
        self._pool = pool
        self._prefix = prefix
        self._held: tuple[int, TrailProjector, asyncio.Task[None]] | None = None

    @property
    def projector(self) -> TrailProjector | None:
        return self._held[1] if self._held is not None else None

    async def tick(self) -> None:
        held = self._held
        if held is not None:
            revision, projector, task = held
            if task.done():
                await self.drop_all(release=True)
                return
            renewed = await self.renew(LEASE_KEY, revision)
            if renewed is None:
                log.warning("projector %s: lease lost", NAME)
                await self.drop_all(release=False)
            else:
                self._held = (renewed, projector, task)
            return
        acquired = await self.acquire(LEASE_KEY)
        if acquired is None:
            return
        projector = TrailProjector(self._nc, self._pool, self._prefix)
        task = asyncio.create_task(projector.run(), name=f"projector-{NAME}")
        self._held = (acquired, projector, task)
        log.info("instance %s: running the projection %s", self.instance_id, NAME)

    async def drop_all(self, *, release: bool) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        revision, projector, task = held
        await stop_worker(task, projector.stop)
        if release:
            await self.release(LEASE_KEY, revision)


# ------------------------------------------------------------------------ reading the trail


async def trail_head(nc: Client, prefix: str) -> int:
    info = await js_api(nc, f"STREAM.INFO.{trail_stream(prefix)}")
    return int(info["state"]["last_seq"])


async def read_trail(
    nc: Client, prefix: str, upto: int, *, batch: int = 1000
) -> AsyncIterator[list[TrailEvent]]:
    """The trail from its start to sequence ``upto``, in batches, through an ordered consumer
    (as ``federation.trail_counts`` reads it)."""
    if upto <= 0:
        return
    js = nc.jetstream()
    sub = await js.subscribe(
        f"{prefix}.sovereign.>", stream=trail_stream(prefix), ordered_consumer=True
    )
    try:
        out: list[TrailEvent] = []
        while True:
            msg = await sub.next_msg(timeout=10)
            seq = msg.metadata.sequence.stream
            if seq > upto:
                break
            out.extend(decode_messages(prefix, [msg]))
            if seq >= upto:
                break
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out
    finally:
        await sub.unsubscribe()


@dataclass
class TrailRebuild:
    reached: int
    rows: int


async def rebuild_trail(pool: asyncpg.Pool, nc: Client, prefix: str) -> TrailRebuild:
    """Replay the whole trail into the trail's tables in one transaction (under the trail's
    lock: the live projector waits, readers see the old rows until the commit)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute("DELETE FROM sovereign_redemptions")
        await conn.execute("DELETE FROM sovereign_trail_status")
        head = await trail_head(nc, prefix)
        async for events in read_trail(nc, prefix, head):
            await apply_trail(conn, events)
        rows = int(await conn.fetchval("SELECT count(*) FROM sovereign_redemptions"))
        return TrailRebuild(head, rows)


# ---------------------------------------------------------------------------- the report


_REPORT = """
SELECT sovereign, code,
       count(*) FILTER (WHERE reversed_at IS NULL) AS redemptions,
       count(*) FILTER (WHERE reversed_at IS NOT NULL) AS reversed,
       coalesce(sum(credit_baisa) FILTER (WHERE reversed_at IS NULL), 0) AS credit_baisa
FROM sovereign_redemptions
WHERE ($1::text[] IS NULL OR code = ANY($1::text[]))
GROUP BY sovereign, code
"""


async def report_figures(
    conn: Conn | asyncpg.Pool, codes: Sequence[str] | None = None
) -> dict[tuple[str, str], CodeFigures]:
    """Per Sovereign and code (only ``codes`` when given): standing and reversed redemptions
    and the credit the standing ones granted."""
    rows = await conn.fetch(_REPORT, list(codes) if codes is not None else None)
    return {
        (r["sovereign"], r["code"]): CodeFigures(
            int(r["redemptions"]), int(r["reversed"]), int(r["credit_baisa"])
        )
        for r in rows
    }


async def global_codes(conn: Conn | asyncpg.Pool) -> list[str] | None:
    """The global codes by the hub's ``global_vouchers`` read model, or None where this
    database has no such table (it is another read model's)."""
    if await conn.fetchval("SELECT to_regclass('global_vouchers')") is None:
        return None
    return [str(r["code"]) for r in await conn.fetch("SELECT code FROM global_vouchers")]
