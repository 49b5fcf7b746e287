"""One owner per data dir: a second ``serve`` refuses, operator jobs attach to the running
owner's servers (never a second nats-server on its store), and without an owner they say so."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.e2e.helpers import ServiceProcess, clean_env, free_port, processes_using, wait_http
from tests.e2e.test_serve import embedded_serve

pytestmark = pytest.mark.timeout(300)

NOT_RUNNING = (
    "no voucher-ledger is running on {dir}; start `voucher-ledger serve` first, "
    "or set NATS_URL/DATABASE_URL"
)


def _nats_servers(data_dir: Path) -> list[psutil.Process]:
    return [p for p in processes_using(data_dir) if "nats-server" in " ".join(p.cmdline())]


def cli(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", *args, "--data-dir", str(data_dir)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _acli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, data_dir, *args)


async def _issue(session: aiohttp.ClientSession, port: int, token: str, code: str) -> None:
    async with session.post(
        f"http://127.0.0.1:{port}/billing/vouchers/issue",
        json={"code": code, "credit_omr": 5, "max_redemptions": 3},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def _listed(session: aiohttp.ClientSession, port: int, token: str) -> set[str]:
    async with session.get(
        f"http://127.0.0.1:{port}/billing/vouchers/list",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
        return {row["code"] for row in await resp.json()}


async def _stop_owner(service: ServiceProcess, data_dir: Path) -> None:
    """SIGTERM the owning serve, which must exit 0; whatever is left is killed either way."""
    service.signal(signal.SIGTERM)
    try:
        assert await service.wait(60) == 0
    finally:
        service.kill()
        for proc in processes_using(data_dir):
            proc.kill()


async def test_a_second_serve_refuses_at_once_and_no_acknowledged_write_is_lost(
    tmp_path: Path,
) -> None:
    service, port, data_dir = embedded_serve(tmp_path)
    second = ServiceProcess(
        ["serve", "--port", str(free_port()), "--data-dir", str(data_dir)],
        clean_env(),
        tmp_path / "second.log",
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        token = (await _acli(data_dir, "token", "--sub", "ops", "--role", "superadmin")).stdout
        token = token.strip()
        assert service.proc is not None
        owner_pid = service.proc.pid
        owner_file = json.loads((data_dir / "owner.json").read_text())
        assert owner_file["pid"] == owner_pid
        assert owner_file["http"] == f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await _issue(session, port, token, "BEFORE-1")
            started = time.monotonic()
            second.start()
            await _issue(session, port, token, "DURING-1")
            code = await second.wait(30)
            elapsed = time.monotonic() - started
            assert code == 1, second.output()
            assert elapsed < 2.0, f"the second serve took {elapsed:.1f} s to refuse"
            out = second.output().strip()
            assert len(out.splitlines()) == 1, out
            assert f"pid {owner_pid}" in out
            assert f"http://127.0.0.1:{port}" in out
            assert "Traceback" not in out
            await _issue(session, port, token, "AFTER-1")
            assert {"BEFORE-1", "DURING-1", "AFTER-1"} <= await _listed(session, port, token)
        assert len(_nats_servers(data_dir)) == 1
        for code_ in ("BEFORE-1", "DURING-1", "AFTER-1"):
            shown = await _acli(data_dir, "show", code_)
            assert shown.returncode == 0, shown.stderr
            assert code_ in shown.stdout
        verified = await _acli(data_dir, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "match" in verified.stdout
    finally:
        second.kill()
        await _stop_owner(service, data_dir)


async def test_operator_jobs_attach_to_the_running_owner_and_leave_it_healthy(
    tmp_path: Path,
) -> None:
    service, port, data_dir = embedded_serve(tmp_path)
    processors = ServiceProcess(
        ["processors", "--data-dir", str(data_dir)], clean_env(), tmp_path / "procs.log"
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        token = (await _acli(data_dir, "token", "--sub", "ops", "--role", "superadmin")).stdout
        token = token.strip()
        nats_before = [p.pid for p in _nats_servers(data_dir)]
        assert len(nats_before) == 1
        conf = (data_dir / "nats" / "nats-server.conf").read_text()
        async with aiohttp.ClientSession() as session:
            await _issue(session, port, token, "JOBS-1")
            jobs: list[tuple[str, ...]] = [
                ("streams", "apply"),
                ("streams", "diff"),
                ("audit", "tail", "--no-follow"),
                ("show", "JOBS-1"),
                ("verify",),
                ("rebuild",),
            ]
            for job in jobs:
                run = await _acli(data_dir, *job)
                assert run.returncode == 0, f"{job}: {run.stdout}{run.stderr}"
                assert "Traceback" not in run.stderr
                assert [p.pid for p in _nats_servers(data_dir)] == nats_before, job
                # the running service is unharmed: a write after the job succeeds
                await _issue(session, port, token, f"AFTER-{job[0].upper()}-{len(job)}")
            diff = await _acli(data_dir, "streams", "diff")
            assert "no drift" in diff.stdout

            processors.start()
            deadline = time.monotonic() + 60
            while "holds partitions" not in processors.output():
                assert processors.proc is not None
                assert processors.proc.poll() is None, processors.output()
                assert time.monotonic() < deadline, processors.output()
                await asyncio.sleep(0.2)
            assert [p.pid for p in _nats_servers(data_dir)] == nats_before
            processors.signal(signal.SIGTERM)
            assert await processors.wait(60) == 0, processors.output()
            await _issue(session, port, token, "AFTER-PROCESSORS")
            assert "AFTER-PROCESSORS" in await _listed(session, port, token)
        # the nats-server configuration was not rewritten by any job
        assert (data_dir / "nats" / "nats-server.conf").read_text() == conf
    finally:
        processors.kill()
        await _stop_owner(service, data_dir)


@pytest.mark.parametrize(
    "job",
    [
        ("streams", "apply"),
        ("streams", "diff"),
        ("processors",),
        ("audit", "tail"),
        ("show", "ANY-CODE"),
        ("verify",),
        ("rebuild",),
    ],
)
def test_without_an_owner_a_job_says_so_at_once_and_starts_nothing(
    tmp_path: Path, job: tuple[str, ...]
) -> None:
    data_dir = tmp_path / "data"
    started = time.monotonic()
    run = cli(data_dir, *job)
    elapsed = time.monotonic() - started
    assert run.returncode == 1, run.stdout + run.stderr
    assert elapsed < 2.0, f"{job} took {elapsed:.1f} s"
    assert run.stderr.strip() == f"voucher-ledger: {NOT_RUNNING.format(dir=data_dir)}"
    assert not (data_dir / "nats").exists()
    assert processes_using(data_dir) == []


def test_serve_on_a_taken_port_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        run = cli(data_dir, "serve", "--port", str(port))
        elapsed = time.monotonic() - started
    assert run.returncode == 1
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert lines == [
        f"voucher-ledger: port {port} on 127.0.0.1 is in use (another voucher-ledger serve, "
        "or another program); choose another with --port or PORT"
    ]
    assert elapsed < 2.0
    assert not data_dir.exists()
    assert processes_using(data_dir) == []


def test_token_never_invents_a_secret(tmp_path: Path) -> None:
    typo = tmp_path / "no-such-data-dir"
    run = cli(typo, "token", "--sub", "ops", "--role", "superadmin")
    assert run.returncode == 1
    assert run.stdout == ""
    assert str(typo / "jwt-secret") in run.stderr
    assert not typo.exists()


async def test_a_nats_server_started_by_hand_on_the_owned_store_cannot_start(
    tmp_path: Path,
) -> None:
    service, port, data_dir = embedded_serve(tmp_path)
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        (nats,) = _nats_servers(data_dir)
        binary = nats.cmdline()[0]
        by_hand = await asyncio.to_thread(
            subprocess.run,
            [binary, "-c", str(data_dir / "nats" / "nats-server.conf")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert by_hand.returncode != 0
        assert "address already in use" in (by_hand.stdout + by_hand.stderr)
        assert [p.pid for p in _nats_servers(data_dir)] == [nats.pid]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
    finally:
        await _stop_owner(service, data_dir)
