"""Bearer-token authentication without any server: HS256 pinning, claims, roles, the secret."""

from __future__ import annotations

import base64
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from voucher_ledger.config.settings import Settings
from voucher_ledger.http.auth import (
    ISSUER_ROLES,
    MIN_SECRET_BYTES,
    Authenticator,
    AuthError,
    ConfigError,
    Principal,
    load_or_create_secret,
    mint_token,
    resolve_secret,
)

SECRET = b"s" * 16 + b"e" * 16 + b"cret-for-tests"
HEADER_MESSAGE = "missing or invalid authorization header"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "role": "operator", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: bytes = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(secret=SECRET)


async def rejected(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(f"Bearer {token}")
    return info.value


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ----------------------------------------------------------------------------------- accepted


async def test_valid_hs256_token_gives_principal_with_sub_and_roles(auth: Authenticator) -> None:
    principal = await auth.authenticate(f"Bearer {mint_token(SECRET, 'alice', 'superadmin')}")
    assert principal == Principal(sub="alice", roles=frozenset({"superadmin"}))
    assert principal.role == "superadmin"
    assert principal.has_any(ISSUER_ROLES)


async def test_mint_token_claims_are_sub_role_iat_exp_plus_extra() -> None:
    token = mint_token(SECRET, "bob", "viewer", ttl=120, now=1_000, extra={"tenant": "om"})
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"sub": "bob", "role": "viewer", "iat": 1_000, "exp": 1_120, "tenant": "om"}


async def test_expiry_within_leeway_is_accepted() -> None:
    auth = Authenticator(secret=SECRET, leeway=30)
    token = mint_token(SECRET, "alice", "viewer", ttl=60, now=int(time.time()) - 70)
    assert (await auth.authenticate(f"Bearer {token}")).sub == "alice"


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ({"viewer", "sovereign-admin", "superadmin"}, "superadmin"),
        ({"viewer", "sovereign-admin", "aaa"}, "sovereign-admin"),
        ({"viewer", "operator"}, "operator"),
        (set(), ""),
    ],
)
def test_role_precedence(roles: set[str], expected: str) -> None:
    assert Principal(sub="x", roles=frozenset(roles)).role == expected


def test_has_any_is_set_intersection() -> None:
    principal = Principal(sub="x", roles=frozenset({"viewer"}))
    assert principal.has_any(["viewer", "superadmin"])
    assert not principal.has_any(ISSUER_ROLES)
    assert not principal.has_any([])


async def test_roles_from_role_realm_access_and_roles_list(auth: Authenticator) -> None:
    token = hs256(
        claims(
            role="operator",
            realm_access={"roles": ["sovereign-admin", 7, None, "offline_access"]},
            roles=["auditor", {"x": 1}, ""],
        )
    )
    principal = await auth.authenticate(f"Bearer {token}")
    assert principal.roles == frozenset(
        {"operator", "sovereign-admin", "offline_access", "auditor"}
    )
    assert principal.role == "sovereign-admin"


async def test_non_string_role_claim_and_malformed_realm_access_are_ignored(
    auth: Authenticator,
) -> None:
    token = hs256(claims(role=["superadmin"], realm_access=["superadmin"], roles="superadmin"))
    principal = await auth.authenticate(f"Bearer {token}")
    assert principal.roles == frozenset()
    assert principal.role == ""


# ----------------------------------------------------------------------------------- rejected


async def test_expired_token_is_rejected_as_expired(auth: Authenticator) -> None:
    token = mint_token(SECRET, "alice", "superadmin", ttl=60, now=int(time.time()) - 3600)
    assert (await rejected(auth, token)).message == "token expired"


async def test_token_without_exp_is_rejected(auth: Authenticator) -> None:
    token = hs256(claims(exp=None))
    assert (await rejected(auth, token)).message == "invalid token"


@pytest.mark.parametrize("sub", [None, "", "   ", 42, ["alice"]])
async def test_token_without_a_string_sub_is_rejected(auth: Authenticator, sub: Any) -> None:
    token = hs256(claims(sub=sub))  # None: no sub claim at all
    assert (await rejected(auth, token)).message == "invalid token"


async def test_alg_none_is_rejected(auth: Authenticator) -> None:
    token = f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims(role='superadmin'))}."
    assert (await rejected(auth, token)).message == "invalid token"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_other_hmac_algorithms_with_the_right_secret_are_rejected(alg: str) -> None:
    secret = SECRET + b"x" * 32  # long enough for the larger digests: no key-length warning
    auth = Authenticator(secret=secret)
    token = jwt.encode(claims(), secret, algorithm=alg)
    assert jwt.decode(token, secret, algorithms=[alg])["sub"] == "alice"  # a valid token
    assert (await rejected(auth, token)).message == "invalid token"


async def test_token_without_alg_is_rejected(auth: Authenticator) -> None:
    good = hs256(claims())
    _, payload, signature = good.split(".")
    token = f"{b64json({'typ': 'JWT'})}.{payload}.{signature}"
    assert (await rejected(auth, token)).message == "invalid token"


async def test_tampered_payload_is_rejected(auth: Authenticator) -> None:
    header, _, signature = hs256(claims(role="viewer")).split(".")
    forged = f"{header}.{b64json(claims(role='superadmin'))}.{signature}"
    assert (await rejected(auth, forged)).message == "invalid token"


async def test_wrong_secret_is_rejected(auth: Authenticator) -> None:
    token = hs256(claims(), secret=b"w" * 48)
    assert (await rejected(auth, token)).message == "invalid token"


async def test_garbage_token_is_rejected(auth: Authenticator) -> None:
    for token in ["x", "a.b.c", "....", "é.é.é", "x" * 10_000]:
        assert (await rejected(auth, token)).message == "invalid token"


@pytest.mark.parametrize(
    "header",
    [
        "bearer {t}",
        "BEARER {t}",
        "Bearer",
        "Bearer ",
        "Basic {t}",
        "",
        None,
        "Bearer  {t}",
        "Bearer {t} ",
        "Bearer\t{t}",
        "{t}",
    ],
)
async def test_malformed_authorization_header_is_rejected(
    auth: Authenticator, header: str | None
) -> None:
    token = mint_token(SECRET, "alice", "superadmin")
    value = header.format(t=token) if header is not None else None
    with pytest.raises(AuthError) as info:
        await auth.authenticate(value)
    assert info.value.message == HEADER_MESSAGE


async def test_issuer_is_enforced_when_configured() -> None:
    auth = Authenticator(secret=SECRET, issuer="https://idp.example/realms/om")
    ok = hs256(claims(iss="https://idp.example/realms/om"))
    assert (await auth.authenticate(f"Bearer {ok}")).sub == "alice"
    assert (await rejected(auth, hs256(claims(iss="https://evil.example")))).message == (
        "invalid token"
    )
    assert (await rejected(auth, hs256(claims()))).message == "invalid token"


async def test_audience_is_enforced_when_configured() -> None:
    auth = Authenticator(secret=SECRET, audience="voucher-ledger")
    for aud in ["voucher-ledger", ["account", "voucher-ledger"]]:
        assert (await auth.authenticate(f"Bearer {hs256(claims(aud=aud))}")).sub == "alice"
    assert (await rejected(auth, hs256(claims(aud="account")))).message == "invalid token"
    assert (await rejected(auth, hs256(claims()))).message == "invalid token"


async def test_audience_is_not_checked_when_not_configured(auth: Authenticator) -> None:
    assert (await auth.authenticate(f"Bearer {hs256(claims(aud='account'))}")).sub == "alice"


async def test_rs256_token_without_jwks_configured_is_rejected(
    auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(role="superadmin"), rsa_key, algorithm="RS256")
    assert (await rejected(auth, token)).message == "invalid token"


async def test_hs256_token_without_secret_configured_is_rejected() -> None:
    # JWKS-only; the URL is never contacted because the HS256 path is closed before that.
    auth = Authenticator(secret=None, jwks_url="http://127.0.0.1:9/jwks")
    try:
        assert (await rejected(auth, hs256(claims()))).message == "invalid token"
    finally:
        await auth.close()


async def test_error_messages_and_logs_never_contain_the_token(
    auth: Authenticator, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    header, payload, signature = hs256(claims(role="viewer")).split(".")
    tokens = [
        mint_token(SECRET, "alice", "viewer", now=int(time.time()) - 7200),
        hs256(claims(exp=None)),
        hs256(claims(), secret=b"w" * 48),
        f"{header}.{b64json(claims(role='superadmin'))}.{signature}",
        f"{b64json({'alg': 'none'})}.{payload}.",
        jwt.encode(claims(), rsa_key, algorithm="RS256"),
        "not-a-jwt-at-all",
    ]
    for token in tokens:
        error = await rejected(auth, token)
        for text in (error.message, str(error), repr(error)):
            assert token not in text
            assert payload not in text
            assert signature not in text
            assert SECRET.decode() not in text
    for record in caplog.records:
        text = record.getMessage()
        assert all(token not in text for token in tokens)
        assert signature not in text
        assert SECRET.decode() not in text


def test_authenticator_refuses_a_short_secret_or_no_key_at_all() -> None:
    with pytest.raises(ConfigError):
        Authenticator(secret=b"x" * (MIN_SECRET_BYTES - 1))
    with pytest.raises(ConfigError):
        Authenticator(secret=b"")
    with pytest.raises(ConfigError):
        Authenticator(secret=None)


# ------------------------------------------------------------------------------------- secret


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["JWT_SECRET", "NATS_URL", "DATABASE_URL", "DATA_DIR", "JWKS_URL"]:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("secret", ["", "short", "x" * (MIN_SECRET_BYTES - 1), "é" * 15])
def test_short_jwt_secret_is_refused(secret: str, tmp_path: Path) -> None:
    settings = Settings.model_validate({"JWT_SECRET": secret, "DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="JWT_SECRET must be at least 32 bytes") as info:
        resolve_secret(settings)
    if secret:
        assert secret not in str(info.value)
    assert not (tmp_path / "jwt-secret").exists()


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("secret", ["x" * MIN_SECRET_BYTES, "é" * 16, "y" * 100])
def test_jwt_secret_of_32_bytes_or_more_is_used(secret: str) -> None:
    settings = Settings.model_validate(
        {"JWT_SECRET": secret, "NATS_URL": "nats://n:4222", "DATABASE_URL": "postgresql://p/db"}
    )
    assert resolve_secret(settings) == secret.encode("utf-8")


@pytest.mark.usefixtures("clean_env")
def test_embedded_default_creates_a_private_secret_file_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings.model_validate({"DATA_DIR": str(data_dir)})
    assert settings.embedded_nats
    assert settings.embedded_postgres
    first = resolve_secret(settings)
    path = data_dir / "jwt-secret"
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= MIN_SECRET_BYTES
    assert resolve_secret(settings) == first
    assert load_or_create_secret(data_dir) == first
    assert sorted(p.name for p in data_dir.iterdir()) == ["jwt-secret"]  # no temp file left


def test_two_data_dirs_get_different_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_a_short_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jwt-secret").write_bytes(b"too-short\n")
    with pytest.raises(ConfigError):
        load_or_create_secret(tmp_path)
    assert (tmp_path / "jwt-secret").read_bytes() == b"too-short\n"


def test_a_hand_written_secret_file_is_used_without_its_newline(tmp_path: Path) -> None:
    (tmp_path / "jwt-secret").write_bytes(b"k" * 40 + b"\n")
    (tmp_path / "jwt-secret").chmod(0o600)
    assert load_or_create_secret(tmp_path) == b"k" * 40


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "servers",
    [
        {"NATS_URL": "nats://n:4222", "DATABASE_URL": "postgresql://p/db"},
        {"NATS_URL": "nats://n:4222"},
        {"DATABASE_URL": "postgresql://p/db"},
    ],
)
def test_external_servers_without_jwt_secret_are_refused(
    servers: dict[str, str], tmp_path: Path
) -> None:
    settings = Settings.model_validate({**servers, "DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="JWT_SECRET is required"):
        resolve_secret(settings)
    assert not (tmp_path / "jwt-secret").exists()


@pytest.mark.usefixtures("clean_env")
def test_environment_jwt_secret_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", "z" * 40)
    monkeypatch.setenv("NATS_URL", "nats://n:4222")
    assert resolve_secret(Settings()) == b"z" * 40


# ------------------------------------------------------------------- Organizations (issue #20)


async def test_the_orgs_claim_names_the_callers_organizations(auth: Authenticator) -> None:
    """Present: the tenant ids it lists (a Keycloak group path's ``/name`` read as ``name``);
    absent: None (membership is then ownership); of another shape: no Organization at all."""
    with_claim = await auth.authenticate(f"Bearer {hs256(claims(orgs=['acme', '/beta', 7]))}")
    assert with_claim.orgs == frozenset({"acme", "beta"})
    assert (with_claim.member_by_claim("acme"), with_claim.member_by_claim("gamma")) == (
        True,
        False,
    )
    without = await auth.authenticate(f"Bearer {hs256(claims())}")
    assert (without.orgs, without.member_by_claim("acme")) == (None, None)
    odd = await auth.authenticate(f"Bearer {hs256(claims(orgs='acme'))}")
    assert (odd.orgs, odd.member_by_claim("acme")) == (frozenset(), False)
    # ORGS_CLAIM names another claim (a group mapper's)
    groups = Authenticator(secret=SECRET, orgs_claim="groups")
    principal = await groups.authenticate(f"Bearer {hs256(claims(groups=['/acme'], orgs=['x']))}")
    assert principal.orgs == frozenset({"acme"})
