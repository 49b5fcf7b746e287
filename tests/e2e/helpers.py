"""Run ``voucher-ledger`` as a real process."""

from __future__ import annotations

import asyncio
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
        assert self.proc is not None
        proc = self.proc
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


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
