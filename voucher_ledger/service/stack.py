"""The running service's resources: servers (embedded or external), NATS, the command bus,
the processor host and the Postgres pool. ``Stack.start`` brings them up in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client

from voucher_ledger.billing.catalog import (
    CatalogSource,
    FileCatalog,
    HttpCatalog,
    sample_catalog_path,
)
from voucher_ledger.billing.checkout import CheckoutService
from voucher_ledger.billing.stripe_gateway import StripeGateway
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.host import ProcessorHost
from voucher_ledger.commands.idempotency import IdempotencyKeys
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings, redact_url
from voucher_ledger.http.auth import Authenticator, ConfigError, resolve_secret
from voucher_ledger.jetstream import fastpaths, streams
from voucher_ledger.jetstream.connection import connect_nats
from voucher_ledger.ledger.voucher import Policy
from voucher_ledger.projections.host import ProjectorHost
from voucher_ledger.projections.migrate import MigrationError, migrate
from voucher_ledger.projections.projector import ProjectionStatus
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.service.embedded import EmbeddedNats, EmbeddedPostgres
from voucher_ledger.service.worker import ProcessorReport, ProcessorWorker, child_env

log = logging.getLogger(__name__)


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
    catalog: CatalogSource | None = None
    stripe: StripeGateway | None = None
    checkout: CheckoutService | None = None
    _recovery: asyncio.Task[None] | None = None
    _reapply: asyncio.Task[None] | None = None
    _nats: EmbeddedNats | None = None
    _pg: EmbeddedPostgres | None = None
    _closing: list[str] = field(default_factory=list)
    # `serve` (not the tests' in-process stacks) runs the processors in a child process.
    processors_in_child: bool = False
    worker: ProcessorWorker | None = None

    async def start(self) -> None:
        s = self.settings
        fastpaths.configure(s.fast_paths)
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
            self.catalog = make_catalog(s)
            if s.stripe_secret_key:
                self.stripe = StripeGateway(
                    s.stripe_secret_key,
                    webhook_secret=s.stripe_webhook_secret,
                    api_base=s.stripe_api_base,
                    currency=s.stripe_currency,
                    success_url=s.success_url,
                    cancel_url=s.cancel_url,
                    sovereign=s.sovereign_fqdn,
                    timeout=s.stripe_timeout,
                )
            else:
                log.warning("STRIPE_SECRET_KEY unset: checkouts that need a card payment get 503")
        if s.embedded_nats:
            self._nats = EmbeddedNats(s.data_dir, binary=s.nats_server_bin)
            self.nats_url = await asyncio.to_thread(self._nats.start)
        else:
            assert s.nats_url is not None
            self.nats_url = s.nats_url
        self.nc = await connect_nats(
            self.nats_url,
            startup_timeout=s.nats_connect_timeout,
            disconnected_cb=self._nats_disconnected,
            reconnected_cb=self._nats_reconnected,
        )
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
                await migrate(conn)  # it logs each migration it applies
        except MigrationError as exc:
            raise StartupError(f"database migration: {exc}") from exc
        self.status = ProjectionStatus(self.pool, [p.name for p in ALL_PROJECTIONS])
        await self.status.refresh()
        if s.run_projectors:
            self.projectors = ProjectorHost(
                self.nc, self.pool, self.spec, self.status, instance_id=s.processor_instance_id
            )
            await self.projectors.start()

        if s.run_processors and self.processors_in_child:
            self.worker = ProcessorWorker(
                self.nc,
                self.spec.layout.prefix,
                child_env(self.nats_url, self.database_url),
                str(s.data_dir),
                instance_id=s.processor_instance_id,
            )
            try:
                await self.worker.start(timeout=s.nats_connect_timeout + 60)
            except RuntimeError as exc:  # the child's own error is in the log above
                raise StartupError(str(exc)) from exc
            log.info(
                "processor process %s (pid %s) runs the command processors",
                self.worker.instance_id,
                self.worker.pid,
            )
        elif s.run_processors:
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
        if self.catalog is not None:
            self.checkout = CheckoutService(
                self.bus,
                self.catalog,
                self.stripe,
                command_timeout=s.command_timeout,
                recovery_after=s.recovery_after,
            )
            if s.run_recovery:
                self._recovery = asyncio.create_task(self._recover(self.checkout))

    async def _nats_disconnected(self) -> None:
        if self.nc is not None and self.nc.is_closed:
            return  # our own shutdown
        log.warning("NATS connection lost; writes answer 503 until it is back")
        if self.bus is not None:
            self.bus.connection_lost()

    async def _nats_reconnected(self) -> None:
        log.info("NATS connection restored")
        if self._reapply is None or self._reapply.done():
            self._reapply = asyncio.create_task(self._ensure_streams())

    async def _ensure_streams(self) -> None:
        """A nats-server that restarted has lost its memory-stored streams (the command queue,
        the leases): declare them again, so writes resume by themselves."""
        pause = 0.5
        while self.nc is not None and self.spec is not None and not self.nc.is_closed:
            try:
                changes = await streams.apply(self.nc, self.spec)
            except Exception as exc:  # noqa: BLE001 - NATS still settling: try again
                log.warning("streams: re-applying after the reconnect failed: %r; retrying", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            for line in changes:
                log.warning("streams: %s (missing after the NATS reconnect)", line)
            return

    async def _recover(self, checkout: CheckoutService) -> None:
        """Finish or compensate half-way checkouts (after a crash) every few seconds."""
        while True:
            try:
                if self.pool is not None:
                    await checkout.recover_once(self.pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage: try again next round
                log.warning("checkout recovery: %r", exc)
            await asyncio.sleep(self.settings.checkout_recovery_interval)

    async def processor_report(self) -> ProcessorReport | None:
        """This instance's processors: their partitions and counters (None: it runs none, or
        its processor process does not answer)."""
        if self.host is not None:
            return ProcessorReport.of(self.host)
        if self.worker is not None:
            return await self.worker.report()
        return None

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
        for task in (self._recovery, self._reapply):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._recovery = self._reapply = None
        if self.stripe is not None:
            await self.stripe.close()
            self.stripe = None
        if self.catalog is not None:
            await self.catalog.close()
            self.catalog = None
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
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
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


def make_catalog(s: Settings) -> CatalogSource:
    if s.catalog_url and s.catalog_file:
        raise StartupError("set CATALOG_URL or CATALOG_FILE (--catalog), not both")
    if s.catalog_url:
        return HttpCatalog(s.catalog_url, timeout=s.catalog_timeout)
    try:
        return FileCatalog(s.catalog_file or sample_catalog_path())
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def load_spec(s: Settings) -> streams.StreamsSpec:
    return streams.load_spec(
        s.subject_prefix,
        s.streams_file,
        event_replicas=s.event_replicas,
        command_replicas=s.command_replicas,
    )
