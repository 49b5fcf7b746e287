"""The fences around the fast paths: the checks of nats.py's and aiohttp's internals, the
switch (setting and environment), and serve's HTTP runner on both of its paths."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.protocol.parser import Parser

from voucher_ledger.config.settings import Settings
from voucher_ledger.http import server
from voucher_ledger.jetstream import fastpaths
from voucher_ledger.service.worker import child_env

TOKEN = b"eyJzZWNyZXQtbWFya2Vy"  # what a leaked token would look like
MALFORMED_REQUEST = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\x01\r\n\r\n"
)


@pytest.fixture(autouse=True)
def fresh_fences(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The switch on and every check run anew; afterwards forgotten again, so that no other
    test sees a fence refused by a simulated mismatch here."""
    monkeypatch.setattr(fastpaths, "_switch", True)
    for fence in fastpaths.FENCES:
        fence.reset()
    yield
    for fence in fastpaths.FENCES:
        fence.reset()


def fence_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == fastpaths.__name__ and r.levelno == logging.WARNING
    ]


def test_every_fence_matches_the_pinned_versions(caplog: pytest.LogCaptureFixture) -> None:
    names = {fence.name for fence in fastpaths.FENCES}
    assert names == {
        "direct dispatch",
        "raw pull deliveries",
        "write now",
        "replay parser hook",
        "JSON answers to malformed HTTP",
    }
    fastpaths.configure(True)
    assert [(f.name, f.problem) for f in fastpaths.FENCES if not f.allowed()] == []
    assert fence_warnings(caplog) == []


def test_the_switch_defaults_to_the_environment_and_the_settings_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastpaths, "_switch", None)
    monkeypatch.delenv("FAST_PATHS", raising=False)
    assert fastpaths.enabled()
    assert Settings().fast_paths is True
    for off in ("false", "0", "no", "OFF"):
        monkeypatch.setenv("FAST_PATHS", off)
        assert not fastpaths.enabled(), off
        assert Settings().fast_paths is False, off
        assert not any(fence.allowed() for fence in fastpaths.FENCES)
    monkeypatch.setenv("FAST_PATHS", "true")
    assert fastpaths.enabled()
    fastpaths.configure(False)  # the settings win over the environment
    assert not fastpaths.enabled()
    assert not fastpaths.DIRECT.allowed()
    # ... and reach the processor child process, whatever the parent's environment said
    assert child_env("nats://n", "postgresql://p")["FAST_PATHS"] == "false"
    fastpaths.configure(True)
    assert child_env("nats://n", "postgresql://p")["FAST_PATHS"] == "true"


def _renamed_process_msg(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Client._process_msg

    async def process(
        self: Client, sid: int, subj: bytes, reply: bytes, data: bytes, hdr: bytes
    ) -> None:
        await original(self, sid, subj, reply, data, hdr)

    monkeypatch.setattr(Client, "_process_msg", process)


def _msg_without_client(monkeypatch: pytest.MonkeyPatch) -> None:
    params = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name in ("subject", "reply", "data", "headers")
    ]
    monkeypatch.setattr(Msg, "__signature__", inspect.Signature(params), raising=False)


def _client_without_pending_size(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Client.__init__

    def init(self: Client) -> None:
        original(self)
        del self._pending_data_size

    monkeypatch.setattr(Client, "__init__", init)


def _parse_with_another_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Parser.parse

    async def parse(self: Parser, chunk: bytes = b"") -> None:
        await original(self, chunk)

    monkeypatch.setattr(Parser, "parse", parse)


def _parser_without_control_line_state(monkeypatch: pytest.MonkeyPatch) -> None:
    from nats.protocol import parser as nats_parser

    monkeypatch.delattr(nats_parser, "AWAITING_CONTROL_LINE")


def _handle_error_with_another_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    original = RequestHandler.handle_error

    def handle_error(
        self: RequestHandler,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
        reason: str | None = None,
    ) -> web.StreamResponse:
        return original(self, request, status, exc, message)

    monkeypatch.setattr(RequestHandler, "handle_error", handle_error)


MISMATCHES = {
    "direct dispatch": (_renamed_process_msg, "Client._process_msg takes (sid, subj"),
    "raw pull deliveries": (_msg_without_client, "Msg takes no _client"),
    "write now": (_client_without_pending_size, "Client._pending_data_size"),
    "replay parser hook": (_parse_with_another_parameter, "Parser.parse takes (chunk)"),
    "JSON answers to malformed HTTP": (
        _handle_error_with_another_signature,
        "RequestHandler.handle_error takes (request, status, exc, message, reason)",
    ),
}


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_a_mismatch_is_one_warning_naming_the_internal_and_the_version(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (fence,) = [f for f in fastpaths.FENCES if f.name == name]
    simulate, internal = MISMATCHES[name]
    others = [f for f in fastpaths.FENCES if f.distribution == fence.distribution]
    with monkeypatch.context() as m:
        simulate(m)
        fastpaths.configure(True)  # at start: every fence checked, this one refused
        assert not fence.allowed()
        assert not fence.allowed()
    assert not fence.allowed()  # once refused, for the rest of the process
    (warning,) = fence_warnings(caplog)
    assert internal in warning
    assert f"{fence.distribution} {fastpaths.version(fence.distribution)}" in warning
    assert fastpaths.version(fence.distribution)[0].isdigit()
    assert repr(name) in warning
    assert [f.name for f in others if not f.allowed()] == [name]  # the others still match


def test_a_missing_parser_constant_refuses_the_replay_hook(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with monkeypatch.context() as m:
        _parser_without_control_line_state(m)
        assert not fastpaths.REPLAY_PARSER.allowed()
    (warning,) = fence_warnings(caplog)
    assert "AWAITING_CONTROL_LINE is missing" in warning


# ------------------------------------------------------------------------------ serve's runner


async def _malformed_answer(runner: web.AppRunner) -> tuple[bytes, bytes]:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(MALFORMED_REQUEST)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await runner.cleanup()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def _app() -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


def _assert_no_request_bytes_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "the refusal is logged"
    assert TOKEN.decode() not in caplog.text
    assert "Traceback" not in caplog.text


async def test_with_the_fast_path_a_malformed_request_gets_a_json_400(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    runner = server.app_runner(_app())
    assert type(runner) is server.AppRunner
    head, body = await _malformed_answer(runner)
    assert head.split(b"\r\n")[0].split()[1] == b"400"
    assert json.loads(body) == {"error": server.MALFORMED}
    _assert_no_request_bytes_logged(caplog)


async def test_with_fast_paths_off_serve_uses_the_stock_runner_and_logs_no_request_bytes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own 400 (text, quoting the line back to its sender); its log line about the
    refused request names the exception's class only."""
    monkeypatch.setattr(fastpaths, "_switch", False)
    caplog.set_level(logging.DEBUG)
    runner = server.app_runner(_app())
    assert type(runner) is web.AppRunner
    head, _ = await _malformed_answer(runner)
    assert head.split(b"\r\n")[0].split()[1] == b"400"
    assert b"text/plain" in head.lower()
    _assert_no_request_bytes_logged(caplog)
    assert any("BadHttpMessage" in r.getMessage() for r in caplog.records), caplog.text


async def test_an_aiohttp_mismatch_serves_on_the_stock_runner(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _handle_error_with_another_signature(monkeypatch)
    runner = server.app_runner(_app())
    assert type(runner) is web.AppRunner
    head, _ = await _malformed_answer(runner)
    assert head.split(b"\r\n")[0].split()[1] == b"400"
    assert b"application/json" not in head.lower()
    _assert_no_request_bytes_logged(caplog)
    assert len(fence_warnings(caplog)) == 1
