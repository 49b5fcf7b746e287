"""Run ``voucher-ledger`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import psutil

from voucher_ledger.service.embedded import free_port


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer: no server URLs, so the embedded default is used."""
    env = {k: v for k, v in os.environ.items() if k not in {"NATS_URL", "DATABASE_URL"}}
    env.update(extra)
    return env


class ServiceProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voucher_ledger.cli", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        """The exit code; an AssertionError naming where the process is stuck (its stacks,
        by py-spy where it can attach, and its output's tail) if it has not exited in time."""
        assert self.proc is not None
        proc = self.proc
        try:
            return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except TimeoutError:
            stacks = await asyncio.to_thread(_stacks, proc.pid)
            raise AssertionError(
                f"{self.args[0]} (pid {proc.pid}) did not exit in {timeout:.0f} s\n"
                f"{stacks}\n--- its output's tail ---\n{self.output()[-6000:]}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _stacks(pid: int) -> str:
    """The Python stacks of a process and its children, or why there are none."""
    pids = [pid]
    with contextlib.suppress(psutil.Error):
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    dumps = []
    for one in pids:
        try:
            done = subprocess.run(
                [
                    os.path.join(os.path.dirname(sys.executable), "py-spy"),
                    "dump",
                    "--pid",
                    str(one),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            dumps.append(f"--- py-spy dump {one} ---\n{done.stdout}{done.stderr}")
        except (OSError, subprocess.SubprocessError) as exc:
            dumps.append(f"--- no stacks for {one}: {exc}")
    return "\n".join(dumps)


async def wait_http(url: str, proc: ServiceProcess, timeout: float = 60) -> aiohttp.ClientResponse:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.proc is not None
            if proc.proc.poll() is not None:
                raise AssertionError(f"service exited early:\n{proc.output()}")
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return resp
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"{url} not up in {timeout}s:\n{proc.output()}")
            await asyncio.sleep(0.1)


async def stop_processes(procs: Iterable[ServiceProcess], timeout: float = 30) -> None:
    """SIGTERM every process still running, then wait for each (SIGKILL after ``timeout``)."""
    procs = list(procs)
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.signal(signal.SIGTERM)
    for proc in procs:
        try:
            await proc.wait(timeout)
        except TimeoutError:
            proc.kill()


def processes_using(data_dir: Path) -> list[psutil.Process]:
    """Processes whose command line names ``data_dir``: the embedded servers a test started."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(data_dir) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


__all__ = [
    "ServiceProcess",
    "clean_env",
    "free_port",
    "processes_using",
    "stop_processes",
    "wait_http",
]


def leaks(log: str, secrets: Iterable[str]) -> list[str]:
    """Where ``log`` holds one of ``secrets`` (shown by its first 12 characters) or a line with
    a JWT (``eyJ``: a bearer token, a NATS user JWT)."""
    found = [s[:12] + "..." for s in secrets if s and s in log]
    found += [line[:120] for line in log.splitlines() if "eyJ" in line]
    return found
