"""Runs the projectors this instance holds a lease for (one active projector per name)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

import asyncpg
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from voucher_ledger.projections.projector import (
    ALL_PROJECTIONS,
    Projection,
    ProjectionStatus,
    Projector,
)
from voucher_ledger.streams import StreamsSpec

log = logging.getLogger(__name__)


@dataclass
class _Held:
    revision: int
    projector: Projector
    task: asyncio.Task[None]


class ProjectorHost:
    def __init__(
        self,
        nc: Client,
        pool: asyncpg.Pool,
        spec: StreamsSpec,
        status: ProjectionStatus,
        *,
        projections: tuple[Projection, ...] = ALL_PROJECTIONS,
        instance_id: str | None = None,
    ) -> None:
        self._nc = nc
        self._pool = pool
        self._spec = spec
        self._status = status
        self._projections = projections
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._kv: KeyValue | None = None
        self._held: dict[str, _Held] = {}
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> set[str]:
        return set(self._held)

    def projector(self, name: str) -> Projector | None:
        held = self._held.get(name)
        return held.projector if held else None

    async def start(self) -> None:
        self._kv = await self._nc.jetstream().key_value(self._spec.lease_bucket)
        await self._tick()
        self._loop_task = asyncio.create_task(self._loop(), name=f"projectors-{self.instance_id}")

    async def stop(self, *, release: bool = True) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for name in list(self._held):
            await self._drop(name, release=release)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._spec.lease_ttl / 3)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep going through NATS blips
                log.warning("projector leases: %r", exc)

    async def _tick(self) -> None:
        kv = self._kv
        assert kv is not None
        owner = self.instance_id.encode()
        for projection in self._projections:
            key = f"projector.{projection.name}"
            held = self._held.get(projection.name)
            if held is not None:
                if held.task.done():
                    await self._drop(projection.name, release=True)
                    continue
                try:
                    held.revision = await kv.update(key, owner, last=held.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    log.warning("projection %s: lease lost", projection.name)
                    await self._drop(projection.name, release=False)
                continue
            try:
                revision = await kv.create(key, owner)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            projector = Projector(self._nc, self._pool, self._spec, projection, self._status)
            task = asyncio.create_task(projector.run(), name=f"projector-{projection.name}")
            self._held[projection.name] = _Held(revision, projector, task)
            log.info("instance %s: running projection %s", self.instance_id, projection.name)

    async def _drop(self, name: str, *, release: bool) -> None:
        held = self._held.pop(name, None)
        if held is None:
            return
        held.projector.stop()
        while not held.task.done():
            held.task.cancel()
            await asyncio.wait({held.task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await held.task
        if release and self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(f"projector.{name}", last=held.revision)
