"""Runs the projectors this instance holds a lease for (one active projector per name)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client

from voucher_ledger.leases import LeaseHost, stop_worker
from voucher_ledger.projections.projector import (
    DecodedEvents,
    Projection,
    ProjectionStatus,
    Projector,
)
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.streams import StreamsSpec

log = logging.getLogger(__name__)


@dataclass
class _Held:
    revision: int
    projector: Projector
    task: asyncio.Task[None]


class ProjectorHost(LeaseHost):
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
        super().__init__(
            nc,
            spec.lease_bucket,
            spec.lease_ttl,
            instance_id or uuid.uuid4().hex[:12],
            "projectors",
        )
        self._pool = pool
        self._spec = spec
        self._status = status
        self._projections = projections
        self._held: dict[str, _Held] = {}
        self._decoded = DecodedEvents()  # shared by this instance's projectors

    @property
    def running(self) -> set[str]:
        return set(self._held)

    def projector(self, name: str) -> Projector | None:
        held = self._held.get(name)
        return held.projector if held else None

    async def tick(self) -> None:
        for projection in self._projections:
            key = f"projector.{projection.name}"
            held = self._held.get(projection.name)
            if held is not None:
                if held.task.done():
                    await self._drop(projection.name, release=True)
                    continue
                revision = await self.renew(key, held.revision)
                if revision is None:
                    log.warning("projection %s: lease lost", projection.name)
                    await self._drop(projection.name, release=False)
                else:
                    held.revision = revision
                continue
            revision = await self.acquire(key)
            if revision is None:
                continue
            projector = Projector(
                self._nc, self._pool, self._spec, projection, self._status, decoded=self._decoded
            )
            task = asyncio.create_task(projector.run(), name=f"projector-{projection.name}")
            self._held[projection.name] = _Held(revision, projector, task)
            log.info("instance %s: running projection %s", self.instance_id, projection.name)

    async def drop_all(self, *, release: bool) -> None:
        for name in list(self._held):
            await self._drop(name, release=release)

    async def _drop(self, name: str, *, release: bool) -> None:
        held = self._held.pop(name, None)
        if held is None:
            return
        await stop_worker(held.task, held.projector.stop)
        if release:
            await self.release(f"projector.{name}", held.revision)
