"""``voucher-ledger serve`` as a newcomer runs it: embedded servers, clean stop, durable data."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.conftest import connect, embedded_credentials
from tests.e2e.helpers import ServiceProcess, clean_env, free_port, processes_using, wait_http
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher

ADMIN = Actor(sub="admin", role="superadmin")


async def bus_for(data_dir: Path) -> tuple[CommandBus, object]:
    url = (data_dir / "nats" / "url").read_text().strip()
    nc = await connect(url, embedded_credentials(data_dir, "service"))
    spec = streams.load_spec("ledger")
    bus = CommandBus(nc, spec.layout, spec.command_stream)
    await bus.start()
    return bus, nc


def embedded_serve(tmp_path: Path) -> tuple[ServiceProcess, int, Path]:
    """``voucher-ledger serve`` on its embedded default, started: (process, port, data dir)."""
    data_dir = tmp_path / "data"
    port = free_port()
    service = ServiceProcess(
        ["serve", "--port", str(port), "--data-dir", str(data_dir)],
        clean_env(),
        tmp_path / "serve.log",
    )
    service.start()
    return service, port, data_dir


async def test_serve_embedded_default_survives_restart_and_stops_cleanly(tmp_path: Path) -> None:
    service, port, data_dir = embedded_serve(tmp_path)
    try:
        resp = await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        assert resp.status == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as health:
                body = await health.json()
            async with session.get(f"http://127.0.0.1:{port}/no/such/route") as missing:
                assert missing.status == 404
                assert "error" in await missing.json()
        assert body["nats"] == "connected"
        assert body["processor_partitions"] == list(range(8))

        bus, nc = await bus_for(data_dir)
        issued = await bus.send(
            IssueVoucher(code="launch-50", credit_baisa=50_000, max_redemptions=5), actor=ADMIN
        )
        assert isinstance(issued, Accepted)
        first = await bus.send(
            RedeemVoucher(code="LAUNCH-50", customer_id="alice"), actor=ADMIN, command_id="r-alice"
        )
        assert isinstance(first, Accepted)
        await bus.close()
        await nc.close()  # type: ignore[attr-defined]

        service.signal(signal.SIGTERM)
        assert await service.wait(60) == 0
        assert processes_using(data_dir) == [], "nats-server or postgres left running"

        # Same data dir: the ledger is still there, and the retried command replays.
        port = free_port()
        service.args = ["serve", "--port", str(port), "--data-dir", str(data_dir)]
        service.start()
        await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        bus, nc = await bus_for(data_dir)
        again = await bus.send(
            RedeemVoucher(code="LAUNCH-50", customer_id="alice"), actor=ADMIN, command_id="r-alice"
        )
        assert again == first
        second = await bus.send(RedeemVoucher(code="LAUNCH-50", customer_id="bob"), actor=ADMIN)
        assert isinstance(second, Accepted)
        assert second.voucher.times_redeemed == 2
        assert second.seq > first.seq
        await bus.close()
        await nc.close()  # type: ignore[attr-defined]

        service.signal(signal.SIGINT)
        assert await service.wait(60) == 0
        assert processes_using(data_dir) == []
        assert "shutting down" in service.output()
    finally:
        service.kill()
        for proc in processes_using(data_dir):
            proc.kill()


def _old_nats_url() -> str | None:
    """The machine's own NATS 2.9 on 4222, when there is one."""
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=0.5) as sock:
            info = sock.recv(4096).decode(errors="replace")
    except OSError:
        return None
    if '"version":"2.9' in info or '"version":"2.10' in info or '"version":"2.11' in info:
        return "nats://127.0.0.1:4222"
    return None


async def refused_start(args: list[str], env: dict[str, str], log: Path) -> str:
    """Run ``voucher-ledger ARGS``, which must refuse to start (exit code 1): its output."""
    service = ServiceProcess(args, env, log)
    service.start()
    try:
        assert await service.wait(60) == 1
    finally:
        service.kill()
    return service.output()


async def test_serve_refuses_a_nats_server_older_than_2_12(tmp_path: Path, pg_url: str) -> None:
    url = _old_nats_url()
    if url is None:
        pytest.skip("no nats-server older than 2.12 on 127.0.0.1:4222 on this machine")
    out = await refused_start(
        ["serve", "--port", str(free_port()), "--data-dir", str(tmp_path)],
        clean_env(NATS_URL=url, DATABASE_URL=pg_url, JWT_SECRET="s" * 40),
        tmp_path / "old.log",
    )
    assert "is too old" in out
    assert ">= 2.12" in out


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["processors"], ["streams", "diff"]])
async def test_an_unreachable_nats_is_a_clear_error_not_an_endless_retry(
    tmp_path: Path, pg_url: str, command: list[str]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"nats://127.0.0.1:{sock.getsockname()[1]}"
    out = await refused_start(
        [*command, "--data-dir", str(tmp_path)] if command[0] != "streams" else command,
        clean_env(
            NATS_URL=dead, DATABASE_URL=pg_url, JWT_SECRET="s" * 40, NATS_CONNECT_TIMEOUT="2"
        ),
        tmp_path / "dead.log",
    )
    assert f"cannot connect to NATS at {dead}: no answer in 2 s" in out
    assert "Traceback" not in out


async def test_a_serve_without_processors_never_invents_a_signing_key(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    """Its own key would refuse every event the real processors signed: it says what to set."""
    out = await refused_start(
        ["serve", "--port", str(free_port()), "--data-dir", str(tmp_path)],
        clean_env(
            NATS_URL=nats_url,
            DATABASE_URL=pg_url,
            JWT_SECRET="s" * 40,
            SUBJECT_PREFIX="nokey",
            RUN_PROCESSORS="false",
        ),
        tmp_path / "nokey.log",
    )
    assert "set SIGNING_PUBLIC_KEY_FILE to the processors' public key" in out
    assert "Traceback" not in out
    assert not (tmp_path / "ledger-signing.key").exists()
    assert not (tmp_path / "ledger-signing.pub").exists()


def _processor_children(service: ServiceProcess) -> list[psutil.Process]:
    assert service.proc is not None
    return [
        child
        for child in psutil.Process(service.proc.pid).children()
        if "processors" in child.cmdline()
    ]


async def _partitions(port: int) -> list[int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        body = await resp.json()
    return list(body["processor_partitions"])


async def test_serve_runs_its_processors_in_a_child_it_restarts_and_takes_along(
    tmp_path: Path,
) -> None:
    """The processors run in a child process of serve: a child that dies is started again and
    the ledger keeps deciding; a serve that is SIGKILLed takes the child with it."""
    service, port, data_dir = embedded_serve(tmp_path)
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        [child] = _processor_children(service)
        assert str(data_dir) in " ".join(child.cmdline())
        assert await _partitions(port) == list(range(8))
        bus, nc = await bus_for(data_dir)
        issued = await bus.send(
            IssueVoucher(code="CHILD-1", credit_baisa=1_000, max_redemptions=2), actor=ADMIN
        )
        assert isinstance(issued, Accepted)

        child.kill()
        child.wait(10)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not (_processor_children(service) and await _partitions(port) == list(range(8))):
            assert loop.time() < deadline, service.output()
            await asyncio.sleep(0.2)
        [again] = _processor_children(service)
        assert again.pid != child.pid
        assert "exited with -9; restarting it" in service.output()
        redeemed = await bus.send(RedeemVoucher(code="CHILD-1", customer_id="c1"), actor=ADMIN)
        assert isinstance(redeemed, Accepted)
        assert redeemed.voucher.times_redeemed == 1
        await bus.close()
        await nc.close()  # type: ignore[attr-defined]

        service.kill()  # SIGKILL: no shutdown code runs in serve
        again.wait(10)  # raises psutil.TimeoutExpired if the child outlived its parent
        assert not again.is_running()
    finally:
        service.kill()
        for proc in processes_using(data_dir):
            proc.kill()


async def test_log_format_json_is_one_object_per_line_from_serve_and_its_processor_child(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    """LOG_FORMAT=json: every line serve and its processor child write is a JSON object (for a
    log aggregator); the access line carries its fields, never the token."""
    import json
    import uuid

    from tests.e2e.api_helpers import call, running_server

    async with running_server(tmp_path, nats_url, pg_url, name="jsonlog", LOG_FORMAT="json") as srv:
        rid = f"json-{uuid.uuid4().hex}"
        token = srv.token()
        async with aiohttp.ClientSession() as http:
            reply = await call(
                http,
                "GET",
                srv.url("/billing/vouchers/list?q=NOTHING"),
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid},
            )
        assert reply.status == 200, reply
        assert reply.headers["X-Request-ID"] == rid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while rid not in srv.process.output():
            assert loop.time() < deadline, srv.process.output()[-2000:]
            await asyncio.sleep(0.1)
        output = srv.process.output()
    lines = [line for line in output.splitlines() if line.strip()]
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line: one JSON object
        assert isinstance(doc, dict), line
        assert {"time", "level", "logger", "message"} <= set(doc), line
        docs.append(doc)
    [access] = [d for d in docs if d.get("request_id") == rid]
    assert access["logger"] == "voucher_ledger.access"
    assert (access["method"], access["route"], access["status"]) == (
        "GET",
        "/billing/vouchers/list",
        200,
    )
    assert isinstance(access["duration_ms"], float)
    assert any(d.get("process") == "processors" for d in docs), "the child's lines are JSON too"
    assert token not in output
    assert "NOTHING" not in output  # no query string value
    assert "Traceback" not in output
