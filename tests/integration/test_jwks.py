"""RS256 via a JWKS served by a real local HTTP server: caching, key rotation, refetch limits,
HS/RS confusion and an unreachable identity provider."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from voucher_ledger.http import auth as auth_module
from voucher_ledger.http.auth import Authenticator, AuthError

SECRET = b"an-hs256-secret-that-is-long-enough-for-tests"
ISSUER = "http://127.0.0.1/realms/vouchers"


@dataclass
class Key:
    kid: str
    private: rsa.RSAPrivateKey

    @property
    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "alg": "RS256", "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            payload, self.private, algorithm="RS256", headers={"kid": self.kid, **headers}
        )


@dataclass
class Jwks:
    """What the fake IdP serves, and how often it was asked."""

    keys: list[Key] = field(default_factory=list)
    hits: int = 0
    status: int = 200
    body: bytes | None = None
    hang: asyncio.Event | None = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.body is not None:
            return web.Response(body=self.body, status=self.status)
        return web.json_response({"keys": [k.jwk for k in self.keys]}, status=self.status)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "f4c1d2e0-keycloak-user",
        "iss": ISSUER,
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": ["sovereign-admin", "offline_access"]},
    }
    base.update(overrides)
    return base


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_with(secret: bytes, payload: dict[str, Any], **headers: Any) -> str:
    """HS256 signed by hand: PyJWT itself refuses a PEM as an HMAC secret."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", **headers}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture
def key1(rsa_keys: list[rsa.RSAPrivateKey]) -> Key:
    return Key("kid-1", rsa_keys[0])


@pytest.fixture
def key2(rsa_keys: list[rsa.RSAPrivateKey]) -> Key:
    return Key("kid-2", rsa_keys[1])


@pytest.fixture
def attacker(rsa_keys: list[rsa.RSAPrivateKey]) -> Key:
    return Key("kid-1", rsa_keys[2])


@pytest.fixture
async def jwks(key1: Key) -> AsyncIterator[Jwks]:
    state = Jwks(keys=[key1])
    app = web.Application()
    app.router.add_get("/realms/vouchers/protocol/openid-connect/certs", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/realms/vouchers/protocol/openid-connect/certs"))
    yield state
    if state.hang is not None:
        state.hang.set()
    await server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


AuthFactory = Callable[..., Authenticator]


@pytest.fixture
async def make_auth(jwks: Jwks, clock: Clock) -> AsyncIterator[AuthFactory]:
    made: list[Authenticator] = []

    def factory(**kwargs: Any) -> Authenticator:
        kwargs.setdefault("secret", None)
        kwargs.setdefault("jwks_url", jwks.url)
        kwargs.setdefault("issuer", ISSUER)
        kwargs.setdefault("clock", clock)
        authenticator = Authenticator(**kwargs)
        made.append(authenticator)
        return authenticator

    yield factory
    for authenticator in made:
        await authenticator.close()


async def ok(auth: Authenticator, token: str) -> str:
    return (await auth.authenticate(f"Bearer {token}")).sub


async def rejected(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(f"Bearer {token}")
    return info.value.message


# ----------------------------------------------------------------------------------- accepted


async def test_rs256_token_with_matching_kid_is_accepted_with_realm_roles(
    make_auth: AuthFactory, jwks: Jwks, key1: Key
) -> None:
    auth = make_auth()
    principal = await auth.authenticate(f"Bearer {key1.sign(claims())}")
    assert principal.sub == "f4c1d2e0-keycloak-user"
    assert principal.roles == frozenset({"sovereign-admin", "offline_access"})
    assert principal.role == "sovereign-admin"
    assert jwks.hits == 1


async def test_jwks_is_fetched_once_and_cached(
    make_auth: AuthFactory, jwks: Jwks, key1: Key, clock: Clock
) -> None:
    auth = make_auth(jwks_cache_seconds=300)
    await asyncio.gather(*(ok(auth, key1.sign(claims(jti=str(i)))) for i in range(20)))
    assert jwks.hits == 1
    clock.now += 299
    await ok(auth, key1.sign(claims()))
    assert jwks.hits == 1
    clock.now += 1  # cache expired: fetched again
    await ok(auth, key1.sign(claims()))
    assert jwks.hits == 2


async def test_token_without_kid_is_accepted_when_the_jwks_has_one_key(
    make_auth: AuthFactory, key1: Key
) -> None:
    auth = make_auth()
    token = jwt.encode(claims(), key1.private, algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(token)
    assert await ok(auth, token) == "f4c1d2e0-keycloak-user"


async def test_hs256_and_rs256_both_work_when_both_are_configured(
    make_auth: AuthFactory, key1: Key
) -> None:
    auth = make_auth(secret=SECRET)
    assert await ok(auth, key1.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert await ok(auth, jwt.encode(claims(sub="local"), SECRET, algorithm="HS256")) == "local"


# ------------------------------------------------------------------------------ key rotation


async def test_unknown_kid_triggers_one_refetch_and_the_rotated_key_is_accepted(
    make_auth: AuthFactory, jwks: Jwks, key1: Key, key2: Key, clock: Clock
) -> None:
    auth = make_auth()
    await ok(auth, key1.sign(claims()))
    assert jwks.hits == 1

    jwks.keys = [key2]  # the IdP rotates its signing key
    clock.now += 10
    assert await ok(auth, key2.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert jwks.hits == 2
    assert await ok(auth, key2.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert jwks.hits == 2  # the new key is cached now

    # The retired key is gone from the cache; its kid is unknown and the window is closed.
    assert await rejected(auth, key1.sign(claims())) == "invalid token"
    assert jwks.hits == 2


async def test_burst_of_unknown_kids_refetches_at_most_once_per_10_seconds(
    make_auth: AuthFactory, jwks: Jwks, key1: Key, clock: Clock
) -> None:
    auth = make_auth()
    await ok(auth, key1.sign(claims()))
    assert jwks.hits == 1

    def unknown() -> str:
        return key1.sign(claims(), kid=f"bogus-{uuid.uuid4().hex}")

    # Within 10 s of the last fetch: nothing may reach the IdP.
    clock.now += 9.9
    burst = await asyncio.gather(
        *(auth.authenticate(f"Bearer {unknown()}") for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, AuthError) and r.message == "invalid token" for r in burst)
    assert jwks.hits == 1

    # The window opens: a concurrent burst makes exactly one request.
    clock.now += 0.1
    burst = await asyncio.gather(
        *(auth.authenticate(f"Bearer {unknown()}") for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, AuthError) for r in burst)
    assert jwks.hits == 2

    clock.now += 5
    for _ in range(10):
        assert await rejected(auth, unknown()) == "invalid token"
    assert jwks.hits == 2

    clock.now += 5
    assert await rejected(auth, unknown()) == "invalid token"
    assert jwks.hits == 3
    # Known keys keep working throughout.
    assert await ok(auth, key1.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert jwks.hits == 3


# -------------------------------------------------------------------------------- forgeries


@pytest.mark.parametrize("secret", [SECRET, None], ids=["hs256-secret-configured", "jwks-only"])
async def test_hs256_token_signed_with_the_rsa_public_pem_is_rejected(
    make_auth: AuthFactory, jwks: Jwks, key1: Key, secret: bytes | None
) -> None:
    auth = make_auth(secret=secret)
    await ok(auth, key1.sign(claims()))  # the public key is cached and known
    for pem in [key1.public_pem, key1.public_pem.strip()]:
        forged = hs256_with(pem, claims(realm_access={"roles": ["superadmin"]}), kid=key1.kid)
        assert await rejected(auth, forged) == "invalid token"
    forged = hs256_with(json.dumps(key1.jwk).encode(), claims(), kid=key1.kid)
    assert await rejected(auth, forged) == "invalid token"


async def test_rs256_token_signed_by_another_key_with_a_known_kid_is_rejected(
    make_auth: AuthFactory, key1: Key, attacker: Key
) -> None:
    auth = make_auth()
    assert await ok(auth, key1.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert attacker.kid == key1.kid
    assert await rejected(auth, attacker.sign(claims())) == "invalid token"


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
async def test_other_rsa_algorithms_are_rejected(
    make_auth: AuthFactory, key1: Key, alg: str
) -> None:
    auth = make_auth()
    token = jwt.encode(claims(), key1.private, algorithm=alg, headers={"kid": key1.kid})
    assert await rejected(auth, token) == "invalid token"


async def test_rs256_token_with_the_wrong_issuer_is_rejected(
    make_auth: AuthFactory, key1: Key
) -> None:
    auth = make_auth()
    assert await rejected(auth, key1.sign(claims(iss="http://evil/realms/x"))) == "invalid token"


async def test_expired_rs256_token_is_rejected_as_expired(
    make_auth: AuthFactory, key1: Key
) -> None:
    auth = make_auth()
    old = int(time.time()) - 3600
    assert await rejected(auth, key1.sign(claims(iat=old, exp=old + 60))) == "token expired"


# --------------------------------------------------------------------------------- IdP down


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_jwks_rejects_quickly_and_logs_without_the_token(
    make_auth: AuthFactory, key1: Key, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="voucher_ledger.http.auth")
    auth = make_auth(jwks_url=f"http://127.0.0.1:{_closed_port()}/certs")
    token = key1.sign(claims())
    started = time.monotonic()
    message = await asyncio.wait_for(rejected(auth, token), timeout=3)
    assert message == "invalid token"
    assert time.monotonic() - started < 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert "JWKS" in warnings[0].getMessage()
    assert all(token not in r.getMessage() for r in caplog.records)
    assert all(token.split(".")[2] not in r.getMessage() for r in caplog.records)


async def test_hanging_jwks_times_out(
    make_auth: AuthFactory,
    jwks: Jwks,
    key1: Key,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert auth_module.JWKS_TIMEOUT == 5.0
    monkeypatch.setattr(auth_module, "JWKS_TIMEOUT", 0.3)
    jwks.hang = asyncio.Event()
    auth = make_auth()
    message = await asyncio.wait_for(rejected(auth, key1.sign(claims())), timeout=3)
    assert message == "invalid token"
    assert jwks.hits == 1
    assert any(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"oops"), (200, b"<html>not json</html>"), (200, b'{"no": "keys"}'), (404, b"{}")],
)
async def test_broken_jwks_response_rejects_rs256_tokens(
    make_auth: AuthFactory, jwks: Jwks, key1: Key, status: int, body: bytes
) -> None:
    jwks.status, jwks.body = status, body
    auth = make_auth()
    assert await rejected(auth, key1.sign(claims())) == "invalid token"
    assert jwks.hits == 1


async def test_outage_keeps_the_cached_keys_and_recovery_is_rate_limited(
    make_auth: AuthFactory, jwks: Jwks, key1: Key, key2: Key, clock: Clock
) -> None:
    auth = make_auth(jwks_cache_seconds=60)
    await ok(auth, key1.sign(claims()))
    jwks.status, jwks.body = 503, b"down"
    clock.now += 61  # cache stale; the refresh fails but the known key keeps working
    assert await ok(auth, key1.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert jwks.hits == 2
    for _ in range(5):
        await ok(auth, key1.sign(claims()))
    assert jwks.hits == 2  # no hammering of a struggling IdP

    jwks.status, jwks.body, jwks.keys = 200, None, [key1, key2]
    clock.now += 10
    assert await ok(auth, key2.sign(claims())) == "f4c1d2e0-keycloak-user"
    assert jwks.hits == 3


async def test_close_closes_the_http_session_and_is_idempotent(
    make_auth: AuthFactory, key1: Key
) -> None:
    auth = make_auth()
    await ok(auth, key1.sign(claims()))
    session = auth._session
    assert session is not None
    await auth.close()
    assert session.closed
    await auth.close()
