"""``serve``'s command processors in a child process of their own.

Python runs one thread at a time per process: in one process, the processors' decide-append-reply
cycle of a hot code waits whenever the HTTP handlers or the projectors have the interpreter. A
child process (``voucher-ledger processors``, on the same NATS and PostgreSQL) gives the
processors a core of their own. The parent:

* starts the child with the same settings and the servers it resolved (the embedded ones
  included), and waits until the child's processors run before it serves HTTP;
* restarts it if it exits (with a growing pause), and stops it on shutdown; the child dies with
  the parent even on a SIGKILL (``PR_SET_PDEATHSIG`` on Linux). A dead child's leases expire
  after the lease TTL, and any instance's processors take its partitions over: the cap stays
  exact whatever happens (every append carries its expected subject sequence);
* answers ``/healthz`` and ``/metrics`` with the child's partitions and counters, asked over
  NATS (``<prefix>.control.processors.<instance>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voucher_ledger.commands.host import ProcessorHost
from voucher_ledger.commands.processor import ProcessorStats
from voucher_ledger.config.settings import PARENT_ENV
from voucher_ledger.jetstream import fastpaths
from voucher_ledger.jetstream.connection import NatsCredentials

log = logging.getLogger(__name__)

RESTART_MIN, RESTART_MAX = 0.5, 30.0
_POLL = 0.25  # seconds between looks at the child's exit status
_PR_SET_PDEATHSIG = 1


def control_subject(prefix: str, instance_id: str) -> str:
    return f"{prefix}.control.processors.{instance_id}"


@dataclass(frozen=True)
class ProcessorReport:
    """What a processor instance holds and has done (``/healthz``, ``/metrics``)."""

    partitions: list[int]
    stats: ProcessorStats = field(default_factory=ProcessorStats)

    @classmethod
    def of(cls, host: ProcessorHost) -> ProcessorReport:
        return cls(sorted(host.partitions), host.stats)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "partitions": self.partitions,
                "commands": [[t, o, n] for (t, o), n in self.stats.commands.items()],
                "conflicts": self.stats.conflicts,
                "transient_refusals": self.stats.transient_refusals,
                "loads": self.stats.loads,
                "presumed": self.stats.presumed,
                "presumed_wrong": self.stats.presumed_wrong,
                "events_appended": self.stats.events_appended,
                "appends": self.stats.appends,
                "append_seconds": self.stats.append_seconds,
                "chained": self.stats.chained,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProcessorReport:
        raw: dict[str, Any] = json.loads(data)
        stats = ProcessorStats(
            commands=Counter({(str(t), str(o)): int(n) for t, o, n in raw["commands"]}),
            conflicts=int(raw["conflicts"]),
            transient_refusals=int(raw.get("transient_refusals", 0)),
            loads=int(raw.get("loads", 0)),
            presumed=int(raw.get("presumed", 0)),
            presumed_wrong=int(raw.get("presumed_wrong", 0)),
            events_appended=int(raw["events_appended"]),
            appends=int(raw.get("appends", 0)),
            append_seconds=float(raw.get("append_seconds", 0.0)),
            chained=int(raw.get("chained", 0)),
        )
        return cls([int(p) for p in raw["partitions"]], stats)


async def answer_reports(nc: Client, prefix: str, host: ProcessorHost) -> Subscription:
    """In the child: answer the parent's questions about this instance."""

    async def reply(msg: Msg) -> None:
        await msg.respond(ProcessorReport.of(host).to_json())

    return await nc.subscribe(control_subject(prefix, host.instance_id), cb=reply)


def die_with_parent() -> None:
    """In the child, first thing: be killed when the ``serve`` that started it dies, however it
    dies (Linux; elsewhere the child outlives a SIGKILLed parent until its own shutdown)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if str(os.getppid()) != parent:  # the parent died before the line above
        os._exit(1)


class ProcessorWorker:
    """Runs and supervises the ``voucher-ledger processors`` child of one ``serve``."""

    def __init__(
        self,
        nc: Client,
        prefix: str,
        env: dict[str, str],
        data_dir: str,
        instance_id: str | None = None,
    ) -> None:
        self._nc = nc
        self._data_dir = data_dir
        self._prefix = prefix
        self.instance_id = instance_id or f"w{uuid.uuid4().hex[:11]}"
        self._env = {
            **env,
            "PROCESSOR_INSTANCE_ID": self.instance_id,
            PARENT_ENV: str(os.getpid()),
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The data dir on the command line: `ps` shows which service the child is part of.
        argv = [sys.executable, "-m", "voucher_ledger.cli", "processors"]
        return subprocess.Popen(
            [*argv, "--data-dir", self._data_dir],
            env=self._env,
            # Its own process group: a Ctrl-C in the terminal reaches the parent only, which
            # then stops the child in order (instead of both racing to shut down).
            start_new_session=True,
        )

    async def start(self, timeout: float) -> None:
        """Start the child; return once its processors run (it answers a report)."""
        self._stopping = False
        self._proc = self._spawn()
        await self._await_ready(timeout)
        self._supervisor = asyncio.create_task(self._supervise(), name="processor-worker")

    async def _await_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.report() is None:
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the processor process exited with {proc.returncode}")
            if loop.time() > deadline:
                raise RuntimeError(f"the processor process did not start in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def _supervise(self) -> None:
        pause = RESTART_MIN
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            # Polled: a thread blocked in waitpid() would show in every profile as busy.
            while (code := proc.poll()) is None:  # noqa: ASYNC110 - no event for a child's exit
                await asyncio.sleep(_POLL)
            if self._stopping:
                return
            log.error(
                "the processor process (pid %d) exited with %s; restarting it in %.1f s",
                proc.pid,
                code,
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(RESTART_MAX, pause * 2)
            if self._stopping:
                return
            self._proc = self._spawn()
            self.restarts += 1
            with contextlib.suppress(RuntimeError):
                await self._await_ready(60.0)
                pause = RESTART_MIN
                log.info("the processor process is back (pid %d)", self._proc.pid)

    async def report(self, timeout: float = 1.0) -> ProcessorReport | None:
        """The child's partitions and counters; None while it does not answer."""
        try:
            msg = await self._nc.request(
                control_subject(self._prefix, self.instance_id), b"", timeout=timeout
            )
        except Exception:  # noqa: BLE001 - no child, or NATS down: nothing to report
            return None
        try:
            return ProcessorReport.from_json(msg.data)
        except (ValueError, KeyError, TypeError):
            return None

    async def stop(self, timeout: float = 20.0) -> None:
        self._stopping = True
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
            except TimeoutError:
                log.warning("the processor process did not stop in %.0f s; killing it", timeout)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
            self._supervisor = None


# The settings that say how a process authenticates to NATS (config/settings.py).
NATS_AUTH_ENV = (
    "NATS_CREDS",
    "NATS_NKEY_SEED",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_TLS_CA",
    "NATS_TLS_CERT",
    "NATS_TLS_KEY",
)


def child_env(
    nats_url: str, database_url: str, credentials: NatsCredentials | None = None
) -> dict[str, str]:
    """The parent's environment, pointed at the servers the parent resolved (so the child
    never starts embedded servers of its own), with the processors' NATS identity: in the
    environment (readable by the same user only), never on the command line."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in NATS_AUTH_ENV}
    env.update({"NATS_URL": nats_url, "DATABASE_URL": database_url})
    if credentials is not None:
        env.update(credentials.env())
    env[fastpaths.ENV] = "true" if fastpaths.enabled() else "false"  # the parent's switch
    return env
