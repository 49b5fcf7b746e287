"""A processor instance: holds partition leases and runs one processor per held partition.

Leases live in a KV bucket whose entries expire ``ttl`` seconds after their last write. Each
instance heartbeats ``member.<id>``, counts live members, and holds its fair share
``ceil(partitions / members)``: it renews what it holds (compare-and-set on the revision),
releases extras, and takes free partitions. A crashed instance's leases expire and another
instance takes them over. A lease is not exclusivity (a paused holder may still append): every
append carries the expected subject sequence, which is what keeps the cap exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import zlib
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.processor import PartitionProcessor, ProcessorStats, StateCache
from voucher_ledger.ledger.voucher import Policy
from voucher_ledger.streams import StreamsSpec

log = logging.getLogger(__name__)


@dataclass
class _Held:
    revision: int
    renewed_at: float
    task: asyncio.Task[None]


class ProcessorHost:
    def __init__(
        self,
        nc: Client,
        spec: StreamsSpec,
        *,
        policy: Policy | None = None,
        instance_id: str | None = None,
        fetch_batch: int = 512,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._spec = spec
        self._layout = spec.layout
        self._policy = policy or Policy()
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._fetch_batch = fetch_batch
        self._ttl = spec.lease_ttl
        self._store = JetStreamEventStore(nc, spec.event_stream)
        self._held: dict[int, _Held] = {}
        self._caches: dict[int, StateCache] = {}
        self._kv: KeyValue | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.stats = ProcessorStats()
        self._processors: dict[int, PartitionProcessor] = {}

    @property
    def partitions(self) -> set[int]:
        return set(self._held)

    def processor(self, partition: int) -> PartitionProcessor | None:
        return self._processors.get(partition)

    async def start(self) -> None:
        self._kv = await self._js.key_value(self._spec.lease_bucket)
        await self._tick()
        self._loop_task = asyncio.create_task(self._loop(), name=f"host-{self.instance_id}")

    async def stop(self, *, release: bool = True) -> None:
        """Stop processing. ``release=False`` simulates a crash: leases are left to expire."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for partition in list(self._held):
            await self._drop(partition, release=release)
        if release and self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(f"member.{self.instance_id}")

    async def _loop(self) -> None:
        interval = self._ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the host alive through NATS blips
                log.warning("instance %s: lease tick failed: %r", self.instance_id, exc)
                self._expire_overdue()

    def _expire_overdue(self) -> None:
        """Without a successful renewal inside the TTL we must assume the lease is gone."""
        deadline = time.monotonic() - self._ttl
        for partition, held in list(self._held.items()):
            if held.renewed_at < deadline:
                log.warning("partition %d: lease overdue, stopping", partition)
                proc = self._processors.pop(partition, None)
                if proc is not None:
                    proc.stop()
                held.task.cancel()
                del self._held[partition]

    async def _tick(self) -> None:
        kv = self._kv
        assert kv is not None
        await kv.put(f"member.{self.instance_id}", b"1")
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        members = max(1, sum(1 for k in keys if k.startswith("member.")))
        target = math.ceil(self._layout.partitions / members)

        for partition in list(self._held):
            held = self._held[partition]
            if held.task.done():
                await self._drop(partition, release=True)
                continue
            try:
                rev = await kv.update(self._key(partition), self._owner, last=held.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("partition %d: lease lost to another instance", partition)
                await self._drop(partition, release=False)
                continue
            held.revision = rev
            held.renewed_at = time.monotonic()

        while len(self._held) > target:
            partition = max(self._held)
            log.info("partition %d: releasing (fair share %d)", partition, target)
            await self._drop(partition, release=True)

        if len(self._held) < target:
            offset = zlib.crc32(self.instance_id.encode())
            for i in range(self._layout.partitions):
                partition = (offset + i) % self._layout.partitions
                if partition in self._held:
                    continue
                try:
                    rev = await kv.create(self._key(partition), self._owner)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                self._start(partition, rev)
                if len(self._held) >= target:
                    break

    @property
    def _owner(self) -> bytes:
        return self.instance_id.encode()

    def _key(self, partition: int) -> str:
        return f"partition.{partition}"

    def _start(self, partition: int, revision: int) -> None:
        cache = self._caches.setdefault(partition, StateCache())
        proc = PartitionProcessor(
            self._nc,
            self._js,
            self._layout,
            self._store,
            self._spec.command_stream,
            partition,
            policy=self._policy,
            stats=self.stats,
            fetch_batch=self._fetch_batch,
            cache=cache,
        )
        self._processors[partition] = proc
        task = asyncio.create_task(proc.run(), name=f"partition-{partition}")
        self._held[partition] = _Held(revision=revision, renewed_at=time.monotonic(), task=task)
        log.info("instance %s: took partition %d", self.instance_id, partition)

    async def _drop(self, partition: int, *, release: bool) -> None:
        held = self._held.pop(partition, None)
        proc = self._processors.pop(partition, None)
        self._caches.pop(partition, None)  # whoever held it meanwhile made our states stale
        if held is None:
            return
        if proc is not None:
            proc.stop()
        while not held.task.done():
            held.task.cancel()
            await asyncio.wait({held.task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await held.task
        if release and self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self._key(partition), last=held.revision)
