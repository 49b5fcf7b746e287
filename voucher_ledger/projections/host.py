"""Runs the projector of the read models while this instance holds its lease (one active
projector in the deployment). One projector applies every read model: one delivery of each
event, one transaction per batch, a checkpoint per read model."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client

from voucher_ledger.jetstream.leases import LeaseHost, stop_worker
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.projections.model import Projection
from voucher_ledger.projections.projector import READ_MODELS, ProjectionStatus, Projector
from voucher_ledger.projections.registry import ALL_PROJECTIONS

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
        public_key: Ed25519PublicKey | None = None,
    ) -> None:
        """``public_key``: the projector checks every event with it (None: no check, tests)."""
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
        self._held: _Held | None = None
        self._public_key = public_key

    @property
    def running(self) -> set[str]:
        """The projections this instance is applying."""
        return {p.name for p in self._projections} if self._held is not None else set()

    @property
    def projector(self) -> Projector | None:
        return self._held.projector if self._held is not None else None

    async def tick(self) -> None:
        key = f"projector.{READ_MODELS}"
        held = self._held
        if held is not None:
            if held.task.done():
                await self._drop(release=True)
                return
            revision = await self.renew(key, held.revision)
            if revision is None:
                log.warning("projector %s: lease lost", READ_MODELS)
                await self._drop(release=False)
            else:
                held.revision = revision
            return
        revision = await self.acquire(key)
        if revision is None:
            return
        projector = Projector(
            self._nc,
            self._pool,
            self._spec,
            self._projections,
            self._status,
            name=READ_MODELS,
            public_key=self._public_key,
        )
        task = asyncio.create_task(projector.run(), name=f"projector-{READ_MODELS}")
        self._held = _Held(revision, projector, task)
        log.info(
            "instance %s: running the projections %s",
            self.instance_id,
            ", ".join(p.name for p in self._projections),
        )

    async def drop_all(self, *, release: bool) -> None:
        await self._drop(release=release)

    async def _drop(self, *, release: bool) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        await stop_worker(held.task, held.projector.stop)
        if release:
            await self.release(f"projector.{READ_MODELS}", held.revision)
