"""Issue #24, item 2: the settings for an external NATS work against a real nats-server.

Each identity a production NATS may give the service is tried through the settings as a
process reads them (``Settings`` from the environment, ``NatsCredentials.from_settings``,
``connect_nats``), and each then uses JetStream the way the ledger does (``streams apply``, an
atomic append, a load):

* an nkey user (``NATS_NKEY_SEED``, a seed file) of a server with ``authorization { users =
  [ {nkey: U...} ] }``; the CLI reads it from its environment;
* a creds file (``NATS_CREDS``) in operator mode: operator, account (JetStream enabled) and
  user JWTs built and signed with nkeys here, the server trusting the operator with a memory
  resolver; ``serve`` runs end to end on it, its processor child too;
* a token (``NATS_TOKEN``);
* TLS with a client certificate (``NATS_TLS_CA``, ``NATS_TLS_CERT``, ``NATS_TLS_KEY``), the CA
  and certificates made here, the server verifying clients.

Wrong credentials (another user's seed, an account's seed, a creds file of another operator,
another token, no or an untrusted client certificate, an untrusted server) are refused at once
with a message that names the setting to look at; a malformed seed or creds file is named,
never shown (nats.py looped forever on a creds file without a JWT). No seed, JWT, token or key
reaches an error message, a log line or the output of a process.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nkeys
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.aio.client import Client

from tests.conftest import FAST, _server_dir, fresh_database
from tests.e2e.api_helpers import serve_on
from tests.e2e.checkout_helpers import Shop
from tests.e2e.helpers import clean_env, leaks
from tests.integration.test_rebuild import envelope
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.auth import role_permissions
from voucher_ledger.jetstream.connection import NatsCredentials, connect_nats
from voucher_ledger.ledger.events import VoucherIssued
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.service.embedded import EmbeddedNats

REFUSED = "the server refused this process's credentials"
TLS_FAILED = "the TLS handshake failed"
NATS_SETTINGS = (
    "NATS_URL",
    "NATS_CREDS",
    "NATS_NKEY_SEED",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_TLS_CA",
    "NATS_TLS_CERT",
    "NATS_TLS_KEY",
)


# ------------------------------------------------------------------------------ nkeys and JWTs


def keypair(prefix: int) -> Any:
    """A new nkey pair of a kind: ``nkeys.PREFIX_BYTE_USER``, ``_ACCOUNT``, ``_OPERATOR``."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def public(kp: Any) -> str:
    return str(kp.public_key.decode())


def seed(kp: Any) -> str:
    return str(kp.seed.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(claims: dict[str, Any], issuer: Any) -> str:
    """A JWT as nats-server takes it: header ``{"typ":"JWT","alg":"ed25519-nkey"}``, the
    claims with ``iss`` (the issuer's public key), ``iat`` and ``jti`` (base32 of the
    SHA-512/256 of the claims without it), signed with the issuer's nkey."""
    body = {"jti": "", "iat": int(time.time()), "iss": public(issuer), **claims}
    digest = hashlib.new("sha512_256", json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}


@dataclass
class Operator:
    """An operator, its system account and one account with JetStream, as ``nsc`` makes them
    (JetStream in operator mode needs the system account)."""

    key: Any
    account: Any
    jwt: str
    account_jwts: dict[str, str]

    @classmethod
    def new(cls, name: str) -> Operator:
        key = keypair(nkeys.PREFIX_BYTE_OPERATOR)
        system = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        account = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        operator_jwt = sign_jwt(
            {
                "sub": public(key),
                "name": name,
                "nats": {"type": "operator", "version": 2, "system_account": public(system)},
            },
            key,
        )
        # JetStream is on for an account whose limits give it storage.
        jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        accounts = {
            public(system): sign_jwt(
                {
                    "sub": public(system),
                    "name": "SYS",
                    "nats": {"type": "account", "version": 2, "limits": UNLIMITED},
                },
                key,
            ),
            public(account): sign_jwt(
                {
                    "sub": public(account),
                    "name": "LEDGER",
                    "nats": {"type": "account", "version": 2, "limits": UNLIMITED | jetstream},
                },
                key,
            ),
        }
        return cls(key, account, operator_jwt, accounts)

    def conf(self) -> str:
        """nats-server's configuration: trust this operator, its accounts preloaded."""
        preload = "".join(f"  {pub}: {jwt}\n" for pub, jwt in self.account_jwts.items())
        return f"operator: {self.jwt}\nresolver: MEMORY\nresolver_preload: {{\n{preload}}}\n"

    def user(self, name: str, permissions: dict[str, Any] | None = None) -> tuple[str, str]:
        """A new user of the account: (its JWT, its seed). ``permissions``: the JWT's ``pub``
        and ``sub`` (none: all)."""
        user = keypair(nkeys.PREFIX_BYTE_USER)
        claims = {
            "sub": public(user),
            "name": name,
            "nats": {
                "type": "user",
                "version": 2,
                "subs": -1,
                "data": -1,
                "payload": -1,
                **(permissions or {"pub": {}, "sub": {}}),
            },
        }
        return sign_jwt(claims, self.account), seed(user)


def creds_file(path: Path, user_jwt: str, user_seed: str) -> Path:
    """The file ``nsc generate creds`` writes, owner-only."""
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
    )
    path.chmod(0o600)
    return path


def mangle(text: str) -> str:
    """``text`` with its middle character changed."""
    i = len(text) // 2
    return text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------------- servers


@dataclass
class Server:
    url: str
    dir: Path

    def log(self) -> str:
        return (self.dir / "nats" / "nats-server.log").read_text()


@contextlib.contextmanager
def nats_server(name: str, conf: str) -> Iterator[Server]:
    """The wheel's nats-server, JetStream on, with ``conf`` added to its configuration."""
    with _server_dir(name) as where:
        server = EmbeddedNats(where, extra_conf=conf)
        url = server.start()
        try:
            yield Server(url, where)
        finally:
            server.stop()


@dataclass
class NkeyUser:
    server: Server
    seed_file: Path
    seed: str


@pytest.fixture(scope="module")
def nkey_user() -> Iterator[NkeyUser]:
    user = keypair(nkeys.PREFIX_BYTE_USER)
    conf = f"authorization {{ users = [ {{ nkey: {public(user)} }} ] }}\n"
    with nats_server("nats-nkey", conf) as server:
        path = secret_file(server.dir / "service.nk", seed(user))
        yield NkeyUser(server, path, seed(user))


@dataclass
class OperatorMode:
    server: Server
    operator: Operator
    creds: Path
    secrets: list[str]


@pytest.fixture(scope="module")
def operator_mode() -> Iterator[OperatorMode]:
    operator = Operator.new("ledger-operator")
    with nats_server("nats-operator", operator.conf()) as server:
        user_jwt, user_seed = operator.user("ledger-service")
        creds = creds_file(server.dir / "service.creds", user_jwt, user_seed)
        secrets = [user_jwt, user_seed, operator.jwt, *operator.account_jwts.values()]
        yield OperatorMode(server, operator, creds, secrets)


TOKEN = "nats-token-" + "k" * 32


@pytest.fixture(scope="module")
def token_server() -> Iterator[Server]:
    with nats_server("nats-token", f'authorization {{ token: "{TOKEN}" }}\n') as server:
        yield server


# ----------------------------------------------------------------------------------------- TLS


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path
    keys: list[str]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(where: Path, stem: str, cert: x509.Certificate, key: Any = None) -> tuple[Path, str]:
    path = where / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return path, ""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    secret_file(where / f"{stem}-key.pem", pem)
    return path, pem


def make_pki(where: Path) -> tuple[Pki, Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed; another
    CA and a client certificate of its own. Returns the PKI and the server's cert and key."""
    where.mkdir(mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca, _ = _write(
        where, "ca", _certificate("ledger test CA", ca_key, "ledger test CA", ca_key, ca=True)
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("nats", server_key, "ledger test CA", ca_key, server=True)
    server, _ = _write(where, "server", server_cert, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate("ledger-service", client_key, "ledger test CA", ca_key)
    cert, pem = _write(where, "client", client_cert, client_key)
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    other_ca, _ = _write(
        where, "other-ca", _certificate("other CA", other_ca_key, "other CA", other_ca_key, ca=True)
    )
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_cert = _certificate("ledger-service", other_key, "other CA", other_ca_key)
    other, other_pem = _write(where, "other-client", other_cert, other_key)
    pki = Pki(
        ca=ca,
        cert=cert,
        key=where / "client-key.pem",
        other_ca=other_ca,
        other_cert=other,
        other_key=where / "other-client-key.pem",
        keys=[_pem_body(pem), _pem_body(other_pem)],
    )
    return pki, server, where / "server-key.pem"


def _pem_body(pem: str) -> str:
    """The key's base64 lines, joined: what a leak would show."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


@dataclass
class TlsServer:
    server: Server
    pki: Pki


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    with _server_dir("nats-tls-pki") as where:
        pki, cert, key = make_pki(where / "pki")
        conf = (
            f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{pki.ca}", verify: true }}\n'
        )
        with nats_server("nats-tls", conf) as server:
            yield TlsServer(server, pki)


# ------------------------------------------------------------------------------------ helpers


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """The settings a process started with only these NATS variables reads."""
    for name in NATS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


async def connect_as(settings: Settings) -> Client:
    """As every process of the stack connects: its settings' URL and identity."""
    assert settings.nats_url is not None
    return await connect_nats(
        settings.nats_url,
        credentials=NatsCredentials.from_settings(settings),
        startup_timeout=60,
    )


async def refusal(settings: Settings) -> str:
    """The StartupError of a connection with these settings (none: the test fails)."""
    try:
        nc = await connect_as(settings)
    except StartupError as exc:
        return str(exc)
    await nc.close()
    pytest.fail("connected")


async def uses_jetstream(nc: Client) -> None:
    """The ledger's use of JetStream on this connection: its streams and buckets applied, an
    event appended (an atomic batch, with its expected last sequence) and loaded back."""
    prefix = f"x{uuid.uuid4().hex[:10]}"
    spec = streams.load_spec(prefix, overrides=FAST)
    await streams.apply(nc, spec)
    store = JetStreamEventStore(nc, spec.event_stream)
    try:
        code = f"EXT-{uuid.uuid4().hex[:6].upper()}"
        event = VoucherIssued(
            code=code,
            credit_baisa=1000,
            description="",
            active=True,
            max_redemptions=0,
            change="created",
        )
        subject = spec.layout.voucher_subject(code)
        [recorded] = await store.append(subject, 0, [envelope("voucher", code, event, "c1")])
        [loaded] = await store.load(subject)
        assert loaded.seq == recorded.seq
        assert loaded.envelope.event == event
    finally:
        await store.close()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    without = {k: v for k, v in clean_env().items() if k not in NATS_SETTINGS}
    return subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", *args],
        env={**without, "LOG_LEVEL": "DEBUG", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ----------------------------------------------------------------------------------- nkey seed


async def test_an_nkey_seed_file_connects_and_uses_jetstream(
    nkey_user: NkeyUser, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_from(
        monkeypatch, NATS_URL=nkey_user.server.url, NATS_NKEY_SEED=str(nkey_user.seed_file)
    )
    nc = await connect_as(settings)
    try:
        await uses_jetstream(nc)
    finally:
        await nc.close()
    assert leaks(caplog.text, [nkey_user.seed]) == []


async def test_an_nkey_seed_that_is_not_the_users_is_refused_without_showing_it(
    nkey_user: NkeyUser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = nkey_user.server.url
    other = seed(keypair(nkeys.PREFIX_BYTE_USER))
    account = seed(keypair(nkeys.PREFIX_BYTE_ACCOUNT))
    files = {
        "other": secret_file(tmp_path / "other.nk", other),
        "account": secret_file(tmp_path / "account.nk", account),
        # the user's seed, one character changed: its checksum no longer holds
        "mangled": secret_file(tmp_path / "mangled.nk", mangle(nkey_user.seed)),
    }
    messages = {
        name: await refusal(settings_from(monkeypatch, NATS_URL=url, NATS_NKEY_SEED=str(path)))
        for name, path in files.items()
    }
    # Another user's seed: the server refuses it, at once.
    assert REFUSED in messages["other"]
    assert "NATS_NKEY_SEED" in messages["other"]
    # An account's seed signs JWTs; it is not sent.
    assert f"NATS_NKEY_SEED ({files['account']})" in messages["account"]
    assert "not a user's" in messages["account"]
    assert f"NATS_NKEY_SEED ({files['mangled']}): no valid nkey seed" in messages["mangled"]
    missing = await refusal(
        settings_from(monkeypatch, NATS_URL=url, NATS_NKEY_SEED=str(tmp_path / "nope.nk"))
    )
    assert "cannot read it: No such file or directory" in missing
    secrets = [nkey_user.seed, other, account, files["mangled"].read_text().strip()]
    assert leaks("\n".join(messages.values()) + caplog.text, secrets) == []


def test_the_cli_takes_its_nkey_seed_from_the_environment(
    nkey_user: NkeyUser, tmp_path: Path
) -> None:
    """``voucher-ledger streams apply`` as an operator runs it: the settings in its
    environment. With another user's seed it exits 1 with the refusal, the seed nowhere."""
    prefix = f"c{uuid.uuid4().hex[:10]}"
    env = {
        "NATS_URL": nkey_user.server.url,
        "NATS_NKEY_SEED": str(nkey_user.seed_file),
        "SUBJECT_PREFIX": prefix,
    }
    applied = cli("streams", "apply", "--data-dir", str(tmp_path / "data"), env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"{prefix.upper()}_EVENTS" in applied.stdout + applied.stderr
    other = seed(keypair(nkeys.PREFIX_BYTE_USER))
    env["NATS_NKEY_SEED"] = str(secret_file(tmp_path / "other.nk", other))
    refused = cli("streams", "apply", "--data-dir", str(tmp_path / "data"), env=env)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, output
    assert REFUSED in output
    assert "Traceback" not in output
    assert leaks(applied.stdout + applied.stderr + output, [nkey_user.seed, other]) == []


# ------------------------------------------------------------------------ creds, operator mode


async def test_a_creds_file_connects_and_uses_jetstream(
    operator_mode: OperatorMode,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_from(
        monkeypatch, NATS_URL=operator_mode.server.url, NATS_CREDS=str(operator_mode.creds)
    )
    nc = await connect_as(settings)
    try:
        await uses_jetstream(nc)
    finally:
        await nc.close()
    assert leaks(caplog.text, operator_mode.secrets) == []


async def test_a_creds_file_of_another_operator_is_refused(
    operator_mode: OperatorMode,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    stranger = Operator.new("ledger-operator")  # the same names, other keys
    user_jwt, user_seed = stranger.user("ledger-service")
    path = creds_file(tmp_path / "stranger.creds", user_jwt, user_seed)
    message = await refusal(
        settings_from(monkeypatch, NATS_URL=operator_mode.server.url, NATS_CREDS=str(path))
    )
    assert REFUSED in message
    assert "NATS_CREDS" in message
    # ... and a user JWT that names the trusted account as its issuer, signed by another key
    user = keypair(nkeys.PREFIX_BYTE_USER)
    forged_seed = seed(user)
    forged_jwt = sign_jwt(
        {
            "iss": public(operator_mode.operator.account),
            "sub": public(user),
            "name": "ledger-service",
            "nats": {"type": "user", "version": 2, "pub": {}, "sub": {}},
        },
        stranger.account,
    )
    forged = creds_file(tmp_path / "forged.creds", forged_jwt, forged_seed)
    message += await refusal(
        settings_from(monkeypatch, NATS_URL=operator_mode.server.url, NATS_CREDS=str(forged))
    )
    assert message.count(REFUSED) == 2
    secrets = [user_jwt, user_seed, forged_jwt, forged_seed, *operator_mode.secrets]
    assert leaks(message + caplog.text, secrets) == []


async def test_a_malformed_creds_file_is_named_not_shown(
    operator_mode: OperatorMode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    user_jwt, user_seed = operator_mode.operator.user("ledger-service")
    whole = creds_file(tmp_path / "whole.creds", user_jwt, user_seed).read_text()
    # nats.py alone looped forever, in the event loop, on a file without the JWT
    seed_only = secret_file(tmp_path / "seed-only.creds", whole[whole.index("-----BEGIN USER") :])
    no_seed = secret_file(tmp_path / "no-seed.creds", whole[: whole.index("****")])
    account_seed = seed(keypair(nkeys.PREFIX_BYTE_ACCOUNT))
    account = secret_file(tmp_path / "account.creds", whole.replace(user_seed, account_seed))
    url = operator_mode.server.url
    messages = []
    for path, why in (
        (seed_only, "not a creds file (no user JWT"),
        (no_seed, "no valid nkey seed in it"),
        (account, "the nkey seed is not a user's"),
    ):
        message = await refusal(settings_from(monkeypatch, NATS_URL=url, NATS_CREDS=str(path)))
        assert f"NATS_CREDS ({path})" in message
        assert why in message
        messages.append(message)
    both = await refusal(
        settings_from(
            monkeypatch,
            NATS_URL=url,
            NATS_CREDS=str(operator_mode.creds),
            NATS_NKEY_SEED=str(tmp_path / "any.nk"),
        )
    )
    assert "NATS_CREDS and NATS_NKEY_SEED" in both
    assert leaks("\n".join(messages), [user_jwt, user_seed, account_seed]) == []


async def test_jwt_permissions_hold_like_the_config_files(
    operator_mode: OperatorMode, tmp_path: Path
) -> None:
    """The README's production setup with JWTs: a subscriber user whose JWT carries the
    subscriber's permissions (``role_permissions``) reads the event stream and cannot publish
    an event."""
    writer = await connect_nats(
        operator_mode.server.url, credentials=NatsCredentials(creds_file=operator_mode.creds)
    )
    prefix = f"p{uuid.uuid4().hex[:10]}"
    spec = streams.load_spec(prefix, overrides=FAST)
    await streams.apply(writer, spec)
    subject = spec.layout.wallet_subject("mallory")
    ack = await writer.request(subject, b"{}", timeout=5)
    seq = json.loads(ack.data)["seq"]
    await writer.close()

    p = role_permissions(spec)["subscriber"]
    user_jwt, user_seed = operator_mode.operator.user(
        "auditor",
        {
            "pub": {"allow": list(p.publish_allow), "deny": list(p.publish_deny)},
            "sub": {"allow": list(p.subscribe_allow), "deny": list(p.subscribe_deny)},
        },
    )
    auditor_creds = creds_file(tmp_path / "auditor.creds", user_jwt, user_seed)
    errors: list[Exception] = []

    async def collect(exc: Exception) -> None:
        errors.append(exc)

    auditor = await connect_nats(
        operator_mode.server.url,
        credentials=NatsCredentials(creds_file=auditor_creds),
        error_cb=collect,
    )
    try:
        got = await auditor.request(
            f"$JS.API.DIRECT.GET.{spec.event_stream}", json.dumps({"seq": seq}).encode(), 5
        )
        assert got.headers is not None
        assert got.headers.get("Nats-Subject") == subject
        with pytest.raises(nats.errors.TimeoutError):
            await auditor.request(subject, b"{}", timeout=1)
        assert any("permissions violation" in str(e).lower() for e in errors), errors
    finally:
        await auditor.close()
    info = await _stream_info(operator_mode, spec.event_stream)
    assert info["state"]["last_seq"] == seq


async def _stream_info(operator_mode: OperatorMode, stream: str) -> dict[str, Any]:
    nc = await connect_nats(
        operator_mode.server.url, credentials=NatsCredentials(creds_file=operator_mode.creds)
    )
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", 5)
        info: dict[str, Any] = json.loads(msg.data)
        return info
    finally:
        await nc.close()


async def test_serve_runs_end_to_end_on_a_creds_file(
    operator_mode: OperatorMode, pg_url: str, tmp_path: Path
) -> None:
    """``serve`` on an external NATS in operator mode, its identity a creds file: issue a
    voucher, redeem it at a checkout, spend the credit; its processor child connects with the
    same file (named in its environment). No JWT or seed in the output."""
    prefix = f"cr{uuid.uuid4().hex[:10]}"
    async with (
        fresh_database(pg_url) as database_url,
        serve_on(
            tmp_path,
            operator_mode.server.url,
            database_url,
            prefix,
            NATS_CREDS=str(operator_mode.creds),
            LOG_LEVEL="DEBUG",
        ) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        shop = Shop(server, session)
        code = f"CREDS-{uuid.uuid4().hex[:6].upper()}"
        await shop.issue(code, 40)
        funded = await shop.checkout("alice", plan_id="free", promo_code=code)
        assert funded.status == 200, funded
        assert funded.json["paid_by_credit"] is True
        paid = await shop.checkout("alice", plan_id="starter")
        assert paid.status == 200, paid
        left = paid.json["credit_balance_baisa"]
        assert 0 <= left < 40 * BAISA
        assert (await shop.balance("alice"))["credit_baisa"] == left
        assert server.process.proc is not None
        [child] = [
            p
            for p in psutil.Process(server.process.proc.pid).children()
            if "processors" in " ".join(p.cmdline())
        ]
        assert child.environ()["NATS_CREDS"] == str(operator_mode.creds)
        output = server.process.output()
    assert " DEBUG " in output
    assert "Traceback" not in output
    assert leaks(output, operator_mode.secrets) == []


# --------------------------------------------------------------------------------------- token


async def test_a_token_connects_and_another_is_refused_without_showing_either(
    token_server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nc = await connect_as(settings_from(monkeypatch, NATS_URL=token_server.url, NATS_TOKEN=TOKEN))
    try:
        await uses_jetstream(nc)
    finally:
        await nc.close()
    wrong = "nats-token-" + "w" * 32
    message = await refusal(settings_from(monkeypatch, NATS_URL=token_server.url, NATS_TOKEN=wrong))
    assert REFUSED in message
    assert leaks(message + caplog.text, [TOKEN, wrong]) == []


# ----------------------------------------------------------------------------------------- TLS


async def test_tls_with_a_client_certificate_connects_and_uses_jetstream(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pki = tls_server.pki
    for url in (tls_server.server.url, tls_server.server.url.replace("nats://", "tls://")):
        settings = settings_from(
            monkeypatch,
            NATS_URL=url,
            NATS_TLS_CA=str(pki.ca),
            NATS_TLS_CERT=str(pki.cert),
            NATS_TLS_KEY=str(pki.key),
        )
        # (the server takes TLS clients only: see the refusals below)
        nc = await connect_as(settings)
        try:
            await uses_jetstream(nc)
        finally:
            await nc.close()
    assert leaks(caplog.text, pki.keys) == []


async def test_tls_refusals_say_what_failed(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each fails at once with the handshake's reason (not "no answer in 60 s")."""
    caplog.set_level(logging.DEBUG)
    pki = tls_server.pki
    url = tls_server.server.url
    cases = {
        # the server verifies clients: none, or one of a CA it does not trust
        "TLSV13_ALERT_CERTIFICATE_REQUIRED": {"NATS_TLS_CA": str(pki.ca)},
        "ALERT_UNKNOWN_CA": {
            "NATS_TLS_CA": str(pki.ca),
            "NATS_TLS_CERT": str(pki.other_cert),
            "NATS_TLS_KEY": str(pki.other_key),
        },
        # the client does not trust the server's certificate: the system's CAs, another CA
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate": {
            "NATS_TLS_CERT": str(pki.cert),
            "NATS_TLS_KEY": str(pki.key),
        },
    }
    messages = []
    for reason, env in cases.items():
        message = await refusal(settings_from(monkeypatch, NATS_URL=url, **env))
        assert f"{TLS_FAILED} (" in message
        assert reason in message, message
        assert "NATS_TLS_CA" in message
        messages.append(message)
    other_ca = await refusal(
        settings_from(
            monkeypatch,
            NATS_URL=url,
            NATS_TLS_CA=str(pki.other_ca),
            NATS_TLS_CERT=str(pki.cert),
            NATS_TLS_KEY=str(pki.key),
        )
    )
    assert "CERTIFICATE_VERIFY_FAILED" in other_ca
    assert leaks("\n".join(messages) + other_ca + caplog.text, pki.keys) == []
