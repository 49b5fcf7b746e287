"""The running service's components, one small object per lifecycle, each with an async ``open``
(or ``start``) and a ``close`` (or ``stop``), and no optional field a caller must check:

* ``Servers``: nats-server and PostgreSQL, embedded (started here) or external (their URLs);
  stopped nats-server first, then PostgreSQL;
* ``NatsLink``: the NATS connection and the JetStream objects of streams.yaml, declared again
  after a reconnect;
* ``ReadModels``: the Postgres pool (migrated) and the projections' status;
* ``Projectors``, the processors (``start_processors``: in this process, in a child process, or
  none), ``Ledger`` (the command bus and the idempotency keys), ``StreamReader`` (one reader of
  the event stream for the whole service);
* ``Limiters`` (the guessing limits, in a KV bucket all instances share), ``WebClients`` (the
  authenticator, the catalog, Stripe) and ``Checkout`` (the checkout saga and its recovery
  loop): the HTTP API's.

``http/app.py`` enters them in that order from ``app.cleanup_ctx``, so they stop in the reverse
order after the HTTP server; ``voucher-ledger processors`` enters the few it needs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client

from voucher_ledger.billing.admin_settings import PaymentSettings, resolve_cipher
from voucher_ledger.billing.catalog import (
    CatalogSource,
    FileCatalog,
    HttpCatalog,
    sample_catalog_path,
)
from voucher_ledger.billing.checkout import CheckoutService
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.host import ProcessorHost
from voucher_ledger.commands.idempotency import IdempotencyKeys
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings, redact_url
from voucher_ledger.http.auth import Authenticator, ConfigError, resolve_secret
from voucher_ledger.http.ratelimit import KeyMirror, Limit, SharedLimiter, TokenStore
from voucher_ledger.jetstream import fastpaths, streams
from voucher_ledger.jetstream.auth import NatsUser, role_permissions
from voucher_ledger.jetstream.connection import NatsCredentials, connect_nats
from voucher_ledger.ledger.voucher import Policy
from voucher_ledger.projections.host import ProjectorHost
from voucher_ledger.projections.migrate import MigrationError, migrate
from voucher_ledger.projections.projector import ProjectionStatus
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.sovereign_trail import TrailProjectorHost
from voucher_ledger.service import federation
from voucher_ledger.service.embedded import EmbeddedNats, EmbeddedPostgres
from voucher_ledger.service.worker import ProcessorReport, ProcessorWorker, child_env
from voucher_ledger.signing.cutover import CutoverError
from voucher_ledger.signing.keys import SigningKeyError, load_public_key, load_signer
from voucher_ledger.signing.proof import EventSigner

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ servers


class Servers:
    """nats-server and PostgreSQL: the embedded ones started here, or the configured URLs.

    The embedded nats-server always runs with authorization (``jetstream/auth.py``): each
    component connects as its role (:meth:`credentials`). An external NATS is reached with the
    one identity the settings give (NATS_CREDS, NATS_NKEY_SEED, NATS_USER/NATS_PASSWORD,
    NATS_TOKEN, TLS), whatever the role."""

    def __init__(
        self, nats: EmbeddedNats | None, pg: EmbeddedPostgres | None, external: NatsCredentials
    ) -> None:
        self._nats = nats
        self._pg = pg
        self._external = external
        self._users: dict[str, NatsUser] | None = None
        self.nats_url = ""
        self.database_url = ""

    @classmethod
    async def start(cls, s: Settings) -> Servers:
        nats = None
        for line in federation.describe(s):
            log.info("%s", line)
        if s.embedded_nats:
            permissions = role_permissions(load_spec(s))
            nats = EmbeddedNats(
                s.data_dir,
                binary=s.nats_server_bin,
                permissions=permissions,
                extra_conf=federation.server_conf(s, s.data_dir.resolve() / "nats"),
                jetstream_domain=s.jetstream_domain,
                # Leaf links refuse two remotes of one name: each domain's server its own.
                server_name=(
                    f"vl_{s.jetstream_domain}" if s.jetstream_domain else "voucher_ledger_embedded"
                ),
            )
        servers = cls(
            nats,
            EmbeddedPostgres(s.data_dir) if s.embedded_postgres else None,
            NatsCredentials.from_settings(s),
        )
        try:
            if servers._nats is not None:
                servers.nats_url = await asyncio.to_thread(servers._nats.start)
                servers._users = servers._nats.users
            else:
                assert s.nats_url is not None  # embedded_nats is false only when it is set
                servers.nats_url = s.nats_url
            if servers._pg is not None:
                servers.database_url = await asyncio.to_thread(servers._pg.start)
            else:
                assert s.database_url is not None  # likewise
                servers.database_url = s.database_url
        except BaseException:
            await servers.stop()
            raise
        return servers

    def credentials(self, role: str) -> NatsCredentials:
        """How a component of ``role`` (``jetstream.auth.ROLES``) connects to NATS."""
        if self._users is None:
            return self._external
        user = self._users[role]
        return NatsCredentials.user_password(user.user, user.password)

    async def stop(self) -> None:
        """nats-server first, then PostgreSQL (the README's shutdown order)."""
        if self._nats is not None:
            await asyncio.to_thread(self._nats.stop)
            self._nats = None
        if self._pg is not None:
            await asyncio.to_thread(self._pg.stop)
            self._pg = None


# ---------------------------------------------------------------------------------------- NATS


class NatsLink:
    """The NATS connection and the JetStream objects declared in streams.yaml. When the
    connection drops, ``on_lost`` callbacks run (the bus fails its waiting writes); when it
    comes back, the streams are declared again (a restarted nats-server lost its memory-stored
    ones: the command queue, the leases), so writes resume by themselves."""

    nc: Client

    def __init__(
        self,
        spec: streams.StreamsSpec,
        url: str = "",
        admin: NatsCredentials | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.spec = spec
        self.on_lost: list[Callable[[], None]] = []
        self._reapply: asyncio.Task[None] | None = None
        self._url = url
        self._admin = admin
        self._timeout = timeout
        # a hub's or a Sovereign's settings: keep its trail stream, or its inbox
        self._trail: Settings | None = None

    @classmethod
    async def open(
        cls,
        s: Settings,
        url: str,
        credentials: NatsCredentials | None = None,
        *,
        admin: NatsCredentials | None = None,
        federate: bool = False,
    ) -> NatsLink:
        """Connect as ``credentials`` and apply streams.yaml (at open and after a reconnect)
        on a short connection as ``admin`` when that is another identity (the embedded
        default: the service and the processors may not create streams), else on this one
        (where nothing differs from the declaration, applying only reads)."""
        fastpaths.configure(s.fast_paths)  # FAST_PATHS, and each fence checked once, up front
        if admin == credentials:
            admin = None
        link = cls(load_spec(s), url, admin, s.nats_connect_timeout)
        if federate and (s.hub or s.sovereign_name):
            link._trail = s
        link.nc = await connect_nats(
            url,
            startup_timeout=s.nats_connect_timeout,
            disconnected_cb=link._disconnected,
            reconnected_cb=link._reconnected,
            credentials=credentials,
        )
        try:
            log.info(
                "connected to nats-server %s at %s",
                link.nc.connected_server_version,
                redact_url(url),
            )
            for line in await link._apply():
                log.info("streams: %s", line)
        except BaseException:
            await link.close()
            raise
        return link

    async def _apply(self) -> list[str]:
        if self._admin is None:
            return await self._apply_on(self.nc)
        admin = await connect_nats(
            self._url,
            "voucher-ledger-admin",
            startup_timeout=self._timeout,
            credentials=self._admin,
        )
        try:
            return await self._apply_on(admin)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), 5)

    async def _apply_on(self, nc: Client) -> list[str]:
        changes = await streams.apply(nc, self.spec)
        if self._trail is not None:
            changes += await federation.ensure_federation(nc, self._trail, self.spec.event_stream)
        return changes

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def _disconnected(self) -> None:
        if self.nc.is_closed:
            return  # our own shutdown
        log.warning("NATS connection lost; writes answer 503 until it is back")
        for callback in self.on_lost:
            callback()

    async def _reconnected(self) -> None:
        log.info("NATS connection restored")
        if self._reapply is None or self._reapply.done():
            self._reapply = asyncio.create_task(self._ensure_streams())

    async def _ensure_streams(self) -> None:
        pause = 0.5
        while not self.nc.is_closed:
            try:
                changes = await self._apply()
            except Exception as exc:  # noqa: BLE001 - NATS still settling: try again
                log.warning("streams: re-applying after the reconnect failed: %r; retrying", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            for line in changes:
                log.warning("streams: %s (missing after the NATS reconnect)", line)
            return

    async def close(self) -> None:
        await _cancel(self._reapply)
        self._reapply = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 5)


# ---------------------------------------------------------------------------------- read side


class ReadModels:
    """The Postgres pool (migrations applied at open) and the projections' checkpoints."""

    def __init__(self, pool: asyncpg.Pool, status: ProjectionStatus) -> None:
        self.pool = pool
        self.status = status

    @classmethod
    async def open(cls, url: str) -> ReadModels:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=10)
        except Exception as exc:
            raise StartupError(f"cannot connect to PostgreSQL at {redact_url(url)}: {exc}") from exc
        try:
            try:
                async with pool.acquire() as conn:
                    await migrate(conn)  # it logs each migration it applies
            except MigrationError as exc:
                raise StartupError(f"database migration: {exc}") from exc
            status = ProjectionStatus(pool, [p.name for p in ALL_PROJECTIONS])
            await status.refresh()
        except BaseException:
            await _close_pool(pool)
            raise
        return cls(pool, status)

    async def close(self) -> None:
        await _close_pool(self.pool)


class Projectors:
    def __init__(self, host: ProjectorHost, trail: TrailProjectorHost | None = None) -> None:
        self.host = host
        self.trail = trail  # a hub's: the read model of its Sovereigns' trail

    @classmethod
    async def start(cls, s: Settings, link: NatsLink, read: ReadModels) -> Projectors:
        host = ProjectorHost(
            link.nc,
            read.pool,
            link.spec,
            read.status,
            instance_id=s.processor_instance_id,
            public_key=signing_public_key(s),
        )
        await host.start()
        trail = None
        if s.hub and s.sovereign_names:
            trail = TrailProjectorHost(
                link.nc,
                read.pool,
                s.subject_prefix,
                link.spec.lease_bucket,
                link.spec.lease_ttl,
                instance_id=s.processor_instance_id,
            )
            try:
                await trail.start()
            except BaseException:
                await host.stop(release=True)
                raise
        return cls(host, trail)

    async def stop(self) -> None:
        if self.trail is not None:
            await self.trail.stop(release=True)
        await self.host.stop(release=True)


class StreamReader:
    """One reader of the event stream for the service: time travel folds from it, readiness
    asks it for the stream's head. (One per request would leave one direct-get inbox
    subscription behind per request.)"""

    def __init__(self, link: NatsLink) -> None:
        self.layout = link.spec.layout
        self.store = JetStreamEventStore(link.nc, link.spec.event_stream)
        self._head = JetStreamEventStore(link.nc, link.spec.event_stream, timeout=2)

    async def projection_lag(self, status: ProjectionStatus) -> dict[str, int] | None:
        """Events each projection still has to apply; None when NATS or Postgres cannot say."""
        try:
            head = await self._head.last_sequence()
            await status.refresh()
        except Exception:  # noqa: BLE001 - NATS or Postgres down: lag unknown
            return None
        return {name: max(0, head - seq) for name, seq in status.applied.items()}

    async def close(self) -> None:
        for store in (self.store, self._head):
            close = getattr(store, "close", None)  # the event store's close(), where it has one
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


# --------------------------------------------------------------------------------- processors


class Processors(Protocol):
    """This instance's command processors, wherever they run."""

    async def report(self) -> ProcessorReport | None:
        """Their partitions and counters (None: none run here, or the child does not answer)."""
        ...

    async def stop(self) -> None: ...


class NoProcessors:
    async def report(self) -> ProcessorReport | None:
        return None

    async def stop(self) -> None:
        return None


class InProcessProcessors:
    def __init__(self, host: ProcessorHost, own_link: NatsLink | None = None) -> None:
        self.host = host
        self._own_link = own_link

    @classmethod
    async def start(
        cls, s: Settings, link: NatsLink, servers: Servers | None = None
    ) -> InProcessProcessors:
        """On ``link``; or, when ``servers`` give the processors an identity of their own
        (the embedded default: only they may append events), on a connection of theirs."""
        own_link = None
        if servers is not None:
            mine = servers.credentials("processors")
            if mine != servers.credentials("service"):
                admin = servers.credentials("admin")
                link = own_link = await NatsLink.open(s, servers.nats_url, mine, admin=admin)
        host = ProcessorHost(
            link.nc,
            link.spec,
            policy=Policy(max_credit_baisa=s.max_credit_baisa),
            instance_id=s.processor_instance_id,
            signer=signing_key(s),
        )
        try:
            await host.start()
        except CutoverError as exc:
            await host.stop(release=True)
            raise StartupError(str(exc)) from exc
        except BaseException:
            await host.stop(release=True)
            if own_link is not None:
                await own_link.close()
            raise
        log.info(
            "processor instance %s holds partitions %s", host.instance_id, sorted(host.partitions)
        )
        return cls(host, own_link)

    async def report(self) -> ProcessorReport | None:
        return ProcessorReport.of(self.host)

    async def stop(self) -> None:
        await self.host.stop(release=True)
        if self._own_link is not None:
            await self._own_link.close()


class ChildProcessors:
    """The processors in a child process (``voucher-ledger processors``), as ``serve`` runs them."""

    def __init__(self, worker: ProcessorWorker) -> None:
        self.worker = worker

    @classmethod
    async def start(cls, s: Settings, link: NatsLink, servers: Servers) -> ChildProcessors:
        worker = ProcessorWorker(
            link.nc,
            link.spec.layout.prefix,
            child_env(servers.nats_url, servers.database_url, servers.credentials("processors")),
            str(s.data_dir),
            instance_id=s.processor_instance_id,
        )
        try:
            await worker.start(timeout=s.nats_connect_timeout + 60)
        except RuntimeError as exc:  # the child's own error is in the log above
            await worker.stop()
            raise StartupError(str(exc)) from exc
        except BaseException:
            await worker.stop()
            raise
        log.info(
            "processor process %s (pid %s) runs the command processors",
            worker.instance_id,
            worker.pid,
        )
        return cls(worker)

    async def report(self) -> ProcessorReport | None:
        return await self.worker.report()

    async def stop(self) -> None:
        await self.worker.stop()


async def start_processors(
    s: Settings, link: NatsLink, servers: Servers, *, in_child: bool
) -> Processors:
    """RUN_PROCESSORS: in a child process (``serve``'s default) or in this one; else none."""
    if not s.run_processors:
        return NoProcessors()
    if in_child:
        return await ChildProcessors.start(s, link, servers)
    return await InProcessProcessors.start(s, link, servers)


# -------------------------------------------------------------------------------- write side


class Ledger:
    """The command bus and the idempotency keys: how the API writes."""

    def __init__(self, bus: CommandBus, idempotency: IdempotencyKeys) -> None:
        self.bus = bus
        self.idempotency = idempotency

    @classmethod
    async def open(cls, link: NatsLink) -> Ledger:
        bus = CommandBus(link.nc, link.spec.layout, link.spec.command_stream)
        await bus.start()
        try:
            idempotency = await IdempotencyKeys.bind(link.nc, link.spec.idempotency_bucket)
        except BaseException:
            await bus.close()
            raise
        link.on_lost.append(bus.connection_lost)
        return cls(bus, idempotency)

    async def close(self) -> None:
        await self.bus.close()


# ----------------------------------------------------------------------------------- the web


class Limiters:
    """The guessing limits (``http/ratelimit.py``), kept in the KV bucket every instance on
    this NATS shares: the public preview per client address (PREVIEW_RATE_PER_MINUTE,
    PREVIEW_BURST), refused promo codes at checkout per address and per customer
    (PROMO_REFUSAL_RATE_PER_MINUTE, PROMO_REFUSAL_BURST); the checkout's check reads a local
    copy of the bucket (``KeyMirror``)."""

    def __init__(
        self,
        preview: SharedLimiter,
        promo_refusals: SharedLimiter,
        mirror: KeyMirror | None = None,
    ) -> None:
        self.preview = preview
        self.promo_refusals = promo_refusals
        self.mirror = mirror

    @classmethod
    def open(cls, s: Settings, link: NatsLink) -> Limiters:
        """The limiters, with the local copy of the bucket the checkout's check reads
        (started here, stopped by :meth:`close`)."""
        mirror = KeyMirror(link.nc, link.spec.limits_bucket)
        mirror.start()
        store = TokenStore(link.nc, link.spec.limits_bucket, mirror=mirror)
        preview = Limit(s.preview_rate_per_minute, s.preview_burst)
        promo = Limit(s.promo_refusal_rate_per_minute, s.promo_refusal_burst)
        return cls(
            SharedLimiter(store, preview, "preview"),
            SharedLimiter(store, promo, "promo"),
            mirror,
        )

    async def close(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop()


class WebClients:
    """What the HTTP API calls out to: the token checker (JWKS), the catalog, and the key the
    stored Stripe secrets are encrypted with (None: none can be stored; Stripe's client is built
    from the keys in force, ``billing/admin_settings.py``). Built first: a configuration error
    stops ``serve`` before any server starts."""

    def __init__(
        self, authenticator: Authenticator, catalog: CatalogSource, cipher: Fernet | None
    ) -> None:
        self.authenticator = authenticator
        self.catalog = catalog
        self.cipher = cipher

    @classmethod
    async def open(cls, s: Settings) -> WebClients:
        try:
            authenticator = Authenticator(
                secret=resolve_secret(s),
                jwks_url=s.jwks_url,
                issuer=s.jwt_issuer,
                audience=s.jwt_audience,
                orgs_claim=s.orgs_claim,
            )
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        try:
            catalog = make_catalog(s)
        except BaseException:
            await authenticator.close()
            raise
        try:
            cipher = resolve_cipher(s)
        except BaseException:
            await catalog.close()
            await authenticator.close()
            raise
        if not s.stripe_secret_key:
            log.warning(
                "STRIPE_SECRET_KEY unset: card payments use the key set in the admin settings; "
                "without one, checkouts that need a card payment get 503"
            )
        return cls(authenticator, catalog, cipher)

    async def close(self) -> None:
        await self.catalog.close()
        await self.authenticator.close()


class Checkout:
    """The checkout saga, and (RUN_RECOVERY) the loop that finishes or compensates half-way
    checkouts after a crash every CHECKOUT_RECOVERY_INTERVAL seconds."""

    def __init__(
        self,
        service: CheckoutService,
        payments: PaymentSettings,
        pool: asyncpg.Pool,
        interval: float,
        expiry_interval: float = 2.0,
    ) -> None:
        self.service = service
        self.payments = payments
        self._pool = pool
        self._interval = interval
        self._expiry_interval = expiry_interval
        self._recovery: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, s: Settings, web: WebClients, ledger: Ledger, read: ReadModels) -> Checkout:
        payments = PaymentSettings(s, read.pool, web.cipher)
        service = CheckoutService(
            ledger.bus,
            web.catalog,
            payments.gateway,
            command_timeout=s.command_timeout,
            recovery_after=s.recovery_after,
        )
        checkout = cls(
            service, payments, read.pool, s.checkout_recovery_interval, s.credit_expiry_interval
        )
        if s.run_recovery:
            checkout._recovery = asyncio.create_task(checkout._recover())
            checkout._expiry = asyncio.create_task(checkout._expire())
        return checkout

    async def _expire(self) -> None:
        """Expired credit leaves its account (CREDIT_EXPIRY_INTERVAL): driven by the read
        model, so it survives restarts; the wallet expires a grant once."""
        await _every(self._expiry_interval, "credit expiry", self.service.expire_once, self._pool)

    async def _recover(self) -> None:
        await _every(self._interval, "checkout recovery", self.service.recover_once, self._pool)

    async def stop(self) -> None:
        await _cancel(self._recovery)
        await _cancel(self._expiry)
        self._recovery = None
        self._expiry = None
        await self.payments.close()


# ------------------------------------------------------------------------------------ helpers


async def _every(
    seconds: float,
    what: str,
    step: Callable[[asyncpg.Pool], Awaitable[object]],
    pool: asyncpg.Pool,
) -> None:
    """``step(pool)`` every ``seconds`` until cancelled; a failure (an outage) is logged and
    tried again next round."""
    while True:
        try:
            await step(pool)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an outage: try again next round
            log.warning("%s: %r", what, exc)
        await asyncio.sleep(seconds)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _close_pool(pool: asyncpg.Pool) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pool.close(), 5)


def make_catalog(s: Settings) -> CatalogSource:
    if s.catalog_url and s.catalog_file:
        raise StartupError("set CATALOG_URL or CATALOG_FILE (--catalog), not both")
    if s.catalog_url:
        return HttpCatalog(s.catalog_url, timeout=s.catalog_timeout)
    try:
        return FileCatalog(s.catalog_file or sample_catalog_path())
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def signing_key(s: Settings) -> EventSigner | None:
    """The processors' signing key (README "Subjects and events"); None with LEDGER_SIGNING
    off."""
    if not s.ledger_signing:
        return None
    try:
        return load_signer(s)
    except SigningKeyError as exc:
        raise StartupError(str(exc)) from exc


def signing_public_key(s: Settings) -> Ed25519PublicKey | None:
    """The key the projectors check events with; None with LEDGER_SIGNING off. A serve that
    runs no processors never invents one: a key of its own would refuse every event the real
    processors signed."""
    if not s.ledger_signing:
        return None
    try:
        return load_public_key(s, create=s.run_processors)
    except SigningKeyError as exc:
        if s.run_processors or s.signing_public_key_file or s.signing_key_file:
            raise StartupError(str(exc)) from exc
        raise StartupError(
            "events are signed (LEDGER_SIGNING) and this serve runs no processors "
            "(RUN_PROCESSORS=false), so it has no key of its own to check them with: set "
            "SIGNING_PUBLIC_KEY_FILE to the processors' public key (`voucher-ledger "
            "signing-key` prints it where they run), or LEDGER_SIGNING=false"
        ) from exc


def load_spec(s: Settings) -> streams.StreamsSpec:
    return streams.load_spec(
        s.subject_prefix,
        s.streams_file,
        event_replicas=s.event_replicas,
        command_replicas=s.command_replicas,
    )
