"""Issue #24, items 1, 2 and 5: only the ledger writes the ledger.

The forgery of the issue (a local process reads the embedded NATS address, connects without a
credential and publishes a forged ``wallet.credit_granted``) is refused at every step: without
credentials the connection is refused; with the read-only subscriber credentials an operator
hands out, a publish to ``<prefix>.events.wallet.X`` (and a command) is refused, while reading
the stream through a consumer of its own works; the service identity cannot publish an event;
the processors can. Nobody deletes or purges the ledger. ``serve`` on its embedded default works
end to end with authorization on, and no NATS secret reaches a log line, ``/metrics``, an error
body, the settings' repr, the processor child's command line or the event stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from nats.aio.client import Client

from tests.conftest import FAST, _server_dir, connect, embedded_credentials, role_credentials
from tests.e2e.api_helpers import ApiServer
from tests.e2e.checkout_helpers import Shop
from tests.e2e.helpers import ServiceProcess, clean_env, free_port, processes_using, wait_http
from tests.integration.test_rebuild import envelope
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.auth import ROLES, NatsUser, read_env_file, role_permissions
from voucher_ledger.jetstream.connection import NatsCredentials, connect_nats
from voucher_ledger.ledger.events import VoucherIssued
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.published.subscriber import AuditSubscriber
from voucher_ledger.service.embedded import EmbeddedNats

PREFIX = "ledger"
FORGED = b'{"type":"wallet.credit_granted","amount_baisa":9000000000}'


@dataclass
class Secured:
    url: str
    users: dict[str, NatsUser]
    spec: streams.StreamsSpec
    log: Path

    async def connect(self, role: str, errors: list[Exception] | None = None) -> Client:
        async def collect(exc: Exception) -> None:
            if errors is not None:
                errors.append(exc)

        credentials = role_credentials(self.users, role)
        return await nats.connect(self.url, error_cb=collect, **credentials.options())


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    """An embedded nats-server with authorization on, as ``serve`` starts it, its streams
    applied by the admin."""
    spec = streams.load_spec(PREFIX, overrides=FAST)
    with _server_dir("nats-auth") as where:
        server = EmbeddedNats(where, permissions=role_permissions(spec))
        url = server.start()
        try:

            async def apply() -> None:
                admin = await connect(url, role_credentials(server.users, "admin"))
                try:
                    await streams.apply(admin, spec)
                finally:
                    await admin.close()

            asyncio.run(apply())
            yield Secured(url, server.users, spec, server.dir / "nats-server.log")
        finally:
            server.stop()


async def last_seq(s: Secured, stream: str | None = None) -> int:
    nc = await s.connect("service")
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{stream or s.spec.event_stream}", b"", 5)
        return int(json.loads(msg.data)["state"]["last_seq"])
    finally:
        await nc.close()


async def refused(nc: Client, subject: str, payload: bytes = FORGED) -> bool:
    """Whether a request to ``subject`` goes unanswered (the server drops a publish the
    identity may not make, and tells the client)."""
    try:
        await nc.request(subject, payload, timeout=1.0)
    except nats.errors.TimeoutError:
        return True
    return False


async def wait_violation(errors: list[Exception], subject: str) -> None:
    deadline = time.monotonic() + 5
    while not any(subject.lower() in str(e).lower() for e in errors):
        assert time.monotonic() < deadline, f"no permissions violation for {subject}: {errors}"
        await asyncio.sleep(0.05)
    assert any("permissions violation" in str(e).lower() for e in errors), errors


async def anonymous_is_refused(url: str) -> None:
    nc = Client()
    try:
        with pytest.raises(Exception, match="Authorization Violation"):
            await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
    finally:
        await nc.close()


# ---------------------------------------------------------------------- the embedded server


async def test_without_credentials_the_connection_is_refused(secured: Secured) -> None:
    await anonymous_is_refused(secured.url)
    started = time.monotonic()
    with pytest.raises(StartupError, match="refused this process's credentials"):
        await connect_nats(secured.url, startup_timeout=20)
    assert time.monotonic() - started < 5, "a refused connection is not retried until timeout"
    wrong = NatsCredentials.user_password("service", "not-the-password-" + "x" * 20)
    with pytest.raises(StartupError) as info:
        await connect_nats(secured.url, startup_timeout=20, credentials=wrong)
    assert "not-the-password" not in str(info.value)


async def test_the_subscriber_can_publish_neither_an_event_nor_a_command(
    secured: Secured,
) -> None:
    errors: list[Exception] = []
    nc = await secured.connect("subscriber", errors)
    try:
        before = await last_seq(secured)
        commands_before = await last_seq(secured, secured.spec.command_stream)
        forged = f"{PREFIX}.events.wallet.X"
        assert await refused(nc, forged)
        await wait_violation(errors, forged)
        command = f"{PREFIX}.commands.0.wallet.X"
        assert await refused(nc, command)
        await wait_violation(errors, command)
        key = f"$KV.{secured.spec.idempotency_bucket}.k1"
        assert await refused(nc, key)
        await wait_violation(errors, key)
        assert await last_seq(secured) == before
        assert await last_seq(secured, secured.spec.command_stream) == commands_before
    finally:
        await nc.close()
    log = secured.log.read_text()
    assert f'"$G/user:subscriber" - Publish Violation - Subject "{forged}"' in log


async def test_the_service_cannot_publish_an_event_and_the_processors_can(
    secured: Secured,
) -> None:
    errors: list[Exception] = []
    service = await secured.connect("service", errors)
    processors = await secured.connect("processors")
    try:
        before = await last_seq(secured)
        subject = secured.spec.layout.wallet_subject("mallory")
        assert await refused(service, subject)
        await wait_violation(errors, subject)
        assert await last_seq(secured) == before
        ack = await processors.request(subject, FORGED, timeout=5)
        assert json.loads(ack.data)["seq"] == before + 1
    finally:
        await service.close()
        await processors.close()


async def test_the_subscriber_reads_the_stream_with_a_consumer_of_its_own(
    secured: Secured,
) -> None:
    code = f"AUDIT-{uuid.uuid4().hex[:6].upper()}"
    processors = await secured.connect("processors")
    event = VoucherIssued(
        code=code,
        credit_baisa=1000,
        description="",
        active=True,
        max_redemptions=0,
        change="created",
    )
    ack = await processors.request(
        secured.spec.layout.voucher_subject(code),
        envelope("voucher", code, event, "c1").model_dump_json().encode(),
        timeout=5,
    )
    seq = int(json.loads(ack.data)["seq"])
    await processors.close()
    errors: list[Exception] = []
    nc = await secured.connect("subscriber", errors)
    try:
        async with AuditSubscriber(nc, PREFIX, durable="auditor", from_seq=seq) as sub:
            record = await asyncio.wait_for(sub.__anext__(), 10)
        assert record.seq == seq
        assert record.subject == secured.spec.layout.voucher_subject(code)
        # ... but not through the projector's consumer, nor delete it
        projector = secured.spec.projector_consumer("read_models")["durable_name"]
        stream = secured.spec.event_stream
        assert await refused(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{projector}", b"")
        assert await refused(nc, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{projector}", b"{}")
    finally:
        await nc.close()
    admin = await secured.connect("admin")
    try:
        info = await admin.request(f"$JS.API.CONSUMER.INFO.{stream}.{projector}", b"", 5)
        assert "error" not in json.loads(info.data)
    finally:
        await admin.close()


async def test_nobody_deletes_or_purges_the_ledger(secured: Secured) -> None:
    before = await last_seq(secured)
    for role in ROLES:
        nc = await secured.connect(role)
        try:
            for op in ("DELETE", "PURGE"):
                assert await refused(nc, f"$JS.API.STREAM.{op}.{secured.spec.event_stream}", b"")
            assert await refused(
                nc, f"$JS.API.STREAM.MSG.DELETE.{secured.spec.event_stream}", b'{"seq":1}'
            )
        finally:
            await nc.close()
    assert await last_seq(secured) == before


# --------------------------------------------------------------------------- serve, end to end


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", *args, "--data-dir", str(data_dir)],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[tuple[ServiceProcess, int, Path]]:
    data_dir = tmp_path / "data"
    port = free_port()
    service = ServiceProcess(
        ["serve", "--port", str(port), "--data-dir", str(data_dir)],
        clean_env(LOG_LEVEL="DEBUG"),
        tmp_path / "serve.log",
    )
    service.start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", service, timeout=90)
        yield service, port, data_dir
        service.signal(signal.SIGTERM)
        assert await service.wait(60) == 0, service.output()[-4000:]
    finally:
        service.kill()
        for proc in processes_using(data_dir):
            proc.kill()


async def test_serve_on_its_embedded_default_requires_credentials_and_works_with_them(
    embedded: tuple[ServiceProcess, int, Path], tmp_path: Path
) -> None:
    service, port, data_dir = embedded
    nats_dir = data_dir / "nats"
    url = (nats_dir / "url").read_text().strip()
    # Generated at first start, owner-only.
    assert _mode(nats_dir / "auth") == 0o700
    for role in ROLES:
        assert _mode(nats_dir / "auth" / f"{role}.env") == 0o600
    assert _mode(nats_dir / "nats-server.conf") == 0o600

    # The attacker of the issue: the address, no credential.
    await anonymous_is_refused(url)

    # The read-only credentials an operator hands out.
    handed = tmp_path / "auditor.env"
    out = _cli(data_dir, "nats", "creds", "subscriber", "--out", str(handed))
    assert _mode(handed) == 0o600
    values = read_env_file(handed)
    assert values["NATS_URL"] == url
    assert values["NATS_USER"] == "subscriber"
    assert values["NATS_PASSWORD"] not in out
    errors: list[Exception] = []

    async def collect(exc: Exception) -> None:
        errors.append(exc)

    auditor = await nats.connect(
        url, user=values["NATS_USER"], password=values["NATS_PASSWORD"], error_cb=collect
    )
    try:
        assert await refused(auditor, f"{PREFIX}.events.wallet.X")
        await wait_violation(errors, f"{PREFIX}.events.wallet.X")
    finally:
        await auditor.close()
    # ... and an operator job run with them reads the stream.
    tail = _cli(data_dir, "audit", "tail", "--no-follow", env=clean_env(**values))
    assert "Traceback" not in tail

    # The API end to end: issue, a checkout paid by credit, the balance read back.
    secret = (data_dir / "jwt-secret").read_text().strip()
    server = ApiServer(port, PREFIX, secret, service, "", url)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        shop = Shop(server, session)
        code = f"AUTH-{uuid.uuid4().hex[:6].upper()}"
        await shop.issue(code, 40)
        funded = await shop.checkout("alice", plan_id="free", promo_code=code)
        assert funded.status == 200, funded
        assert funded.json["paid_by_credit"] is True
        assert (await shop.balance("alice"))["credit_baisa"] == 40 * BAISA
        paid = await shop.checkout("alice", plan_id="starter")
        assert paid.status == 200, paid
        assert paid.json["paid_by_credit"] is True
        left = paid.json["credit_balance_baisa"]
        assert 0 <= left < 40 * BAISA
        assert (await shop.balance("alice"))["credit_baisa"] == left
        assert (await shop.voucher(code))["times_redeemed"] == 1

        # No NATS secret anywhere a client or an operator sees.
        passwords = [NatsUser(**_user(data_dir, role)).password for role in ROLES]
        seen = []
        for path in ("/metrics", "/healthz", "/readyz", "/billing/vouchers/NOPE-1"):
            async with session.get(server.url(path), headers=server.auth()) as resp:
                seen.append(await resp.text())
        bad = await shop.checkout("alice", plan_id="no-such-plan")
        seen.append(bad.text)
    # The processor child got its identity through its environment, not its command line.
    assert service.proc is not None
    [child] = [
        p
        for p in psutil.Process(service.proc.pid).children()
        if "processors" in " ".join(p.cmdline())
    ]
    assert child.environ()["NATS_USER"] == "processors"
    events = await _raw_events(url, embedded_credentials(data_dir, "service"))
    assert len(events) >= 3
    # The events are signed with a key generated into the data dir, owner-only; neither the
    # key's PEM nor its raw bytes reach a log, an answer, the command line or the stream.
    key_file = data_dir / "ledger-signing.key"
    assert _mode(key_file) == 0o600
    assert all(b'"proof":' in data for data in events)
    private = load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    raw_key = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pem_body = "".join(key_file.read_text().splitlines()[1:-1])
    signing_secrets = [pem_body, base64.b64encode(raw_key).decode(), raw_key.hex()]
    signing_secrets.append(base64.urlsafe_b64encode(raw_key).decode().rstrip("="))
    for secret_value in passwords + signing_secrets:
        assert secret_value not in " ".join(child.cmdline())
        assert secret_value not in service.output()
        assert all(secret_value not in text for text in seen)
        assert all(secret_value.encode() not in data for data in events)
    assert "Traceback" not in service.output()


def _user(data_dir: Path, role: str) -> dict[str, str]:
    values = read_env_file(data_dir / "nats" / "auth" / f"{role}.env")
    return {"user": values["NATS_USER"], "password": values["NATS_PASSWORD"]}


async def _raw_events(url: str, credentials: NatsCredentials) -> list[bytes]:
    """Every message of the event stream, headers and data, as bytes."""
    nc = await connect(url, credentials)
    try:
        stream = f"{PREFIX.upper()}_EVENTS"
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", 5)).data)
        out = []
        for seq in range(1, int(info["state"]["last_seq"]) + 1):
            msg = await nc.request(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=5
            )
            out.append(str(msg.headers).encode() + msg.data)
        return out
    finally:
        await nc.close()


def test_nats_secrets_are_masked_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    password, token = "pw-" + "s" * 30, "tok-" + "t" * 30
    monkeypatch.setenv("NATS_PASSWORD", password)
    monkeypatch.setenv("NATS_TOKEN", token)
    monkeypatch.setenv("NATS_USER", "svc")
    settings = Settings()
    credentials = NatsCredentials.from_settings(settings)
    for text in (repr(settings), str(settings), repr(credentials), str(credentials)):
        assert password not in text
        assert token not in text
    assert settings.model_dump_json().count(password) == 0
    assert credentials.options()["password"] == password
    assert credentials.options()["token"] == token
