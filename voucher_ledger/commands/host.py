"""A processor instance: holds partition leases and runs one processor per held partition.

Each instance heartbeats ``member.<id>`` in the lease bucket, counts live members, and holds its
fair share ``ceil(partitions / members)`` of ``partition.<n>`` keys: it renews what it holds,
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

import nats.js.errors
from nats.aio.client import Client

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.processor import PartitionProcessor, ProcessorStats, StateCache
from voucher_ledger.commands.store import EventStore
from voucher_ledger.jetstream.leases import LeaseHost, stop_worker
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.voucher import Policy
from voucher_ledger.signing.cutover import ensure_cutover
from voucher_ledger.signing.proof import EventChecker, EventSigner

log = logging.getLogger(__name__)


@dataclass
class _Held:
    revision: int
    renewed_at: float
    processor: PartitionProcessor
    task: asyncio.Task[None]


class ProcessorHost(LeaseHost):
    def __init__(
        self,
        nc: Client,
        spec: StreamsSpec,
        *,
        policy: Policy | None = None,
        instance_id: str | None = None,
        fetch_batch: int = 512,
        signer: EventSigner | None = None,
    ) -> None:
        """``signer``: the ledger's signing key; every event is sealed with it and every loaded
        history checked with its public half (None: unsigned and unchecked, tests only)."""
        super().__init__(
            nc,
            spec.lease_bucket,
            spec.lease_ttl,
            instance_id or uuid.uuid4().hex[:12],
            "processors",
        )
        self._spec = spec
        self._layout = spec.layout
        self._policy = policy or Policy()
        self._fetch_batch = fetch_batch
        self._store: EventStore = JetStreamEventStore(nc, spec.event_stream)
        self._held: dict[int, _Held] = {}
        self.stats = ProcessorStats()
        self._signer = signer
        self._checker: EventChecker | None = None

    async def start(self) -> None:
        """Record the signing cut-over (the first start with signing), then take partitions."""
        if self._signer is not None and self._checker is None:
            cutover = await ensure_cutover(self._nc, self._spec.event_stream, self._signer)
            self._checker = EventChecker(self._signer.public_key, cutover)
        await super().start()

    @property
    def partitions(self) -> set[int]:
        return set(self._held)

    def processor(self, partition: int) -> PartitionProcessor | None:
        held = self._held.get(partition)
        return held.processor if held else None

    async def stop(self, *, release: bool = True) -> None:
        await super().stop(release=release)
        await self._store.close()  # its processors are stopped: no load is left
        if release and self._kv is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(f"member.{self.instance_id}")

    def on_tick_failed(self) -> None:
        """Without a successful renewal inside the TTL we must assume the lease is gone."""
        deadline = time.monotonic() - self._ttl
        for partition, held in list(self._held.items()):
            if held.renewed_at < deadline:
                log.warning("partition %d: lease overdue, stopping", partition)
                held.processor.stop()
                held.task.cancel()
                del self._held[partition]

    async def tick(self) -> None:
        kv = self.kv
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
            revision = await self.renew(self._key(partition), held.revision)
            if revision is None:
                log.warning("partition %d: lease lost to another instance", partition)
                await self._drop(partition, release=False)
                continue
            held.revision = revision
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
                revision = await self.acquire(self._key(partition))
                if revision is None:
                    continue
                self._start(partition, revision)
                if len(self._held) >= target:
                    break

    def _key(self, partition: int) -> str:
        return f"partition.{partition}"

    def _start(self, partition: int, revision: int) -> None:
        # A fresh cache: whoever held the partition meanwhile made any older state stale.
        proc = PartitionProcessor(
            self._nc,
            self._layout,
            self._store,
            self._spec.command_stream,
            partition,
            policy=self._policy,
            stats=self.stats,
            fetch_batch=self._fetch_batch,
            cache=StateCache(),
            signer=self._signer,
            checker=self._checker,
            route=self.processor,
        )
        task = asyncio.create_task(proc.run(), name=f"partition-{partition}")
        self._held[partition] = _Held(revision, time.monotonic(), proc, task)
        log.info("instance %s: took partition %d", self.instance_id, partition)

    async def drop_all(self, *, release: bool) -> None:
        for partition in list(self._held):
            await self._drop(partition, release=release)

    async def _drop(self, partition: int, *, release: bool) -> None:
        held = self._held.pop(partition, None)
        if held is None:
            return
        await stop_worker(held.task, held.processor.stop)
        if release:
            await self.release(self._key(partition), held.revision)
