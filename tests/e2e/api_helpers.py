"""Shared helpers for the HTTP API end-to-end tests: a fresh database, a real
``voucher-ledger serve`` process on the shared NATS and PostgreSQL, tokens, and a small client."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import fresh_database
from tests.e2e.helpers import ServiceProcess, clean_env, free_port, wait_http
from voucher_ledger.http.auth import mint_token

SECRET = "e2e-api-secret-" + "x" * 60  # >= 64 bytes, so an HS512 token can be minted with it


VOUCHER_KEYS = {
    "code",
    "credit_omr",
    "credit_baisa",
    "description",
    "active",
    "max_redemptions",
    "times_redeemed",
    "created_at",
    "updated_at",
    # issue #20: the window and the eligibility rules
    "starts_at",
    "expires_at",
    "plans",
    "min_order_omr",
    "min_order_baisa",
    "new_organizations_only",
    "credit_valid_for",
    # issue #21: what it gives (credit, or a discount's terms: null for a credit voucher)
    "kind",
    "percent_off",
    "amount_off_omr",
    "amount_off_baisa",
    "applies_to",
    "duration",
    "summary",
}
PREVIEW_KEYS = {
    "code",
    "credit_omr",
    "description",
    "active",
    "accepting_redemptions",
    "starts_at",
    "expires_at",
    "kind",  # issue #21
    "summary",
    "reason",  # only with a 410
}


@dataclass
class ApiServer:
    """A running ``voucher-ledger serve`` and what a test needs to talk to it."""

    port: int
    prefix: str
    secret: str = field(repr=False)
    process: ServiceProcess
    database_url: str
    nats_url: str
    tokens: dict[str, str] = field(default_factory=dict, repr=False)
    data_dir: Path | None = None  # serve's --data-dir (its signing key is there)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def token(self, role: str = "superadmin", sub: str = "admin", ttl: int = 3600) -> str:
        key = f"{sub}/{role}/{ttl}"
        if key not in self.tokens:
            self.tokens[key] = mint_token(self.secret.encode(), sub, role, ttl)
        return self.tokens[key]

    def auth(self, role: str = "superadmin", sub: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}


@contextlib.asynccontextmanager
async def running_server(
    tmp_dir: Path, nats_url: str, pg_url: str, name: str = "api", **env: str
) -> AsyncIterator[ApiServer]:
    """Start ``voucher-ledger serve`` on a fresh database and a unique subject prefix.

    On exit: SIGTERM, and the exit code must be 0 (the process is killed if anything fails)."""
    async with fresh_database(pg_url) as database_url:
        prefix = f"{name}{uuid.uuid4().hex[:10]}"
        try:
            async with serve_on(tmp_dir, nats_url, database_url, prefix, **env) as server:
                yield server
        finally:
            await _delete_streams(nats_url, prefix)


@contextlib.asynccontextmanager
async def serve_on(
    tmp_dir: Path,
    nats_url: str,
    database_url: str,
    prefix: str,
    *,
    expect_exit: int | None = 0,
    **env: str,
) -> AsyncIterator[ApiServer]:
    """``voucher-ledger serve`` on a given database and prefix (a restart sees the same data).
    On exit: SIGTERM and, unless ``expect_exit`` is None, that exit code."""
    port = free_port()
    settings = {
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "SUBJECT_PREFIX": prefix,
        "JWT_SECRET": SECRET,
        "PREVIEW_RATE_PER_MINUTE": "100000",
        "PREVIEW_BURST": "100000",
        "PROMO_REFUSAL_RATE_PER_MINUTE": "100000",
        "PROMO_REFUSAL_BURST": "100000",
        "LOG_LEVEL": "INFO",
    }
    settings.update(env)
    data_dir = tmp_dir / f"data-{prefix}"
    service = ServiceProcess(
        ["serve", "--port", str(port), "--data-dir", str(data_dir)],
        clean_env(**settings),
        tmp_dir / f"{prefix}-{port}.log",
    )
    service.start()
    try:
        resp = await wait_http(f"http://127.0.0.1:{port}/healthz", service)
        assert resp.status == 200, service.output()
        yield ApiServer(
            port=port,
            prefix=prefix,
            secret=SECRET,
            process=service,
            database_url=database_url,
            nats_url=nats_url,
            data_dir=data_dir,
        )
        if expect_exit is not None:
            service.signal(signal.SIGTERM)
            code = await service.wait(60)
            assert code == expect_exit, f"serve exited with {code}:\n{service.output()[-4000:]}"
    finally:
        service.kill()


async def _delete_streams(nats_url: str, prefix: str) -> None:
    """Drop the test server's JetStream streams so the shared NATS does not accumulate them."""
    from tests.conftest import connect
    from voucher_ledger.jetstream import streams

    with contextlib.suppress(Exception):
        nc = await connect(nats_url)
        try:
            spec = streams.load_spec(prefix)
            for cfg in spec.streams.values():
                with contextlib.suppress(Exception):
                    await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"", timeout=5)
        finally:
            await nc.close()


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def __repr__(self) -> str:  # shown by pytest when an assertion fails
        return f"Reply({self.status}, {self.text[:500]!r})"


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    data: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    kwargs: dict[str, Any] = {"headers": dict(headers or {})}
    if json_body is not None:
        kwargs["json"] = json_body
    elif data is not None:
        # aiohttp warns (an error here) about large raw bodies; a stream is what it wants.
        big = isinstance(data, bytes) and len(data) > 512 * 1024
        kwargs["data"] = io.BytesIO(data) if big else data
    async with session.request(method, url, **kwargs) as resp:
        text = await resp.text()
        return Reply(resp.status, dict(resp.headers), text)


def sync_call(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Reply:
    """A blocking request with the standard library (for hypothesis tests): never raises on a
    4xx/5xx, returns the status, headers and body text."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return Reply(resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        with exc:
            text = exc.read().decode("utf-8", "replace")
            return Reply(exc.code, dict(exc.headers), text)


def assert_json_error(reply: Reply, status: int | None = None) -> str:
    """The reply is a JSON ``{"error": "<non-empty string>"}`` (with ``status`` if given)."""
    if status is not None:
        assert reply.status == status, reply
    assert reply.content_type == "application/json", reply.headers
    body = reply.json
    assert isinstance(body, dict), reply
    assert isinstance(body.get("error"), str), reply
    assert body["error"], reply
    return str(body["error"])


__all__ = [
    "PREVIEW_KEYS",
    "SECRET",
    "VOUCHER_KEYS",
    "ApiServer",
    "Reply",
    "assert_json_error",
    "call",
    "fresh_database",
    "running_server",
    "sync_call",
]
