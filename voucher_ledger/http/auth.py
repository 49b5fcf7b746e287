"""Bearer-token authentication: HS256 with a shared secret, optionally RS256 via a JWKS (Keycloak).

Fixes over the seed service: the algorithm is pinned per key (no ``none``, no HS384/HS512, no
HS/RS confusion), ``exp`` and ``sub`` are required, and the secret must be at least 32 bytes.
Neither the token nor the secret ever appears in an error message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from voucher_ledger.config.settings import Settings, redact_url

log = logging.getLogger(__name__)

ISSUER_ROLES: frozenset[str] = frozenset({"superadmin", "sovereign-admin"})

MIN_SECRET_BYTES = 32
SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a password

BEARER = "Bearer "
MAX_TOKEN_CHARS = 8192
# A token's unknown ``kid`` may trigger a JWKS refetch, but never more often than this.
MIN_REFETCH_INTERVAL = 10.0
JWKS_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048

HEADER_MESSAGE = "missing or invalid authorization header"
INVALID = "invalid token"
EXPIRED = "token expired"

_PRECEDENCE = ("superadmin", "sovereign-admin")
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class Principal:
    sub: str
    roles: frozenset[str]
    # The Organizations (tenant ids) the token says the caller belongs to (the ``orgs`` claim,
    # ORGS_CLAIM); None when the token does not carry the claim (membership is then ownership).
    orgs: frozenset[str] | None = None

    def member_by_claim(self, tenant_id: str) -> bool | None:
        """True / False when the token's claim says; None when it carries no claim."""
        return None if self.orgs is None else tenant_id in self.orgs

    @property
    def role(self) -> str:
        """The single most privileged role, for logs and the ``actor`` of events."""
        for role in _PRECEDENCE:
            if role in self.roles:
                return role
        return min(self.roles) if self.roles else ""

    def has_any(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)


class AuthError(Exception):
    """401. ``.message`` is safe to show; never contains the token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(Exception):
    """The service must refuse to start; the message is for a human."""


# ------------------------------------------------------------------------------------- secret


def resolve_secret(settings: Settings) -> bytes:
    """The HS256 secret: ``JWT_SECRET``, or (embedded default only) ``DATA_DIR/jwt-secret``."""
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (it is {len(secret)}); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return secret
    if settings.embedded_nats and settings.embedded_postgres:
        return load_or_create_secret(settings.data_dir)
    raise ConfigError(
        "JWT_SECRET is required when NATS_URL or DATABASE_URL is set (a generated secret in "
        f"DATA_DIR/{SECRET_FILE} is only used by the all-embedded default); set it to at least "
        f"{MIN_SECRET_BYTES} random bytes, shared by every instance"
    )


def read_secret(settings: Settings) -> bytes:
    """The secret the service verifies tokens with, never a new one: ``JWT_SECRET``, or (embedded
    default) the ``DATA_DIR/jwt-secret`` that ``serve`` generated. A data dir without one (not
    started yet, another folder, a typo) is a :class:`ConfigError` naming the path looked at."""
    if settings.jwt_secret is not None or not (
        settings.embedded_nats and settings.embedded_postgres
    ):
        return resolve_secret(settings)
    path = settings.data_dir.resolve() / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        raise ConfigError(
            f"no JWT secret at {path}: start `voucher-ledger serve` with this data dir first, "
            "pass the --data-dir it runs with, or set JWT_SECRET"
        ) from None


def load_or_create_secret(data_dir: Path) -> bytes:
    """``data_dir/jwt-secret``, created (mode 0600, atomically) on first use and reused after."""
    path = data_dir / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode("ascii")
    tmp = data_dir / f".{SECRET_FILE}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link() never replaces an existing file: if another process won the race, use its
            # secret so that both agree.
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret(path)
        except OSError:
            os.replace(tmp, path)  # a filesystem without hard links
    finally:
        tmp.unlink(missing_ok=True)
    log.info("generated a new JWT secret in %s", path)
    return secret


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{path} holds a JWT secret shorter than {MIN_SECRET_BYTES} bytes; "
            "delete it to have a new one generated, or set JWT_SECRET"
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    return secret


def mint_token(
    secret: bytes,
    sub: str,
    role: str,
    ttl: int = 3600,
    *,
    now: int | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """An HS256 token ``{sub, role, iat, exp=iat+ttl}`` plus ``extra``."""
    iat = int(time.time()) if now is None else now
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": iat, "exp": iat + ttl}
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")


# -------------------------------------------------------------------------------- authenticate


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    role = claims.get("role")
    if isinstance(role, str) and role:
        found.add(role)
    realm = claims.get("realm_access")
    if isinstance(realm, dict):
        found.update(_strings(realm.get("roles")))
    found.update(_strings(claims.get("roles")))
    return frozenset(found)


def _orgs(claims: dict[str, Any], name: str) -> frozenset[str] | None:
    """The claim's tenant ids: a list of strings (a Keycloak group mapper's ``/name`` paths
    are read as ``name``); a claim of another shape names no Organization."""
    if name not in claims:
        return None
    return frozenset(item.removeprefix("/") for item in _strings(claims[name]))


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str) and item]


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or raises :class:`AuthError`.

    ``clock`` (monotonic seconds) only drives the JWKS cache and refetch limit.
    """

    def __init__(
        self,
        *,
        secret: bytes | None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        orgs_claim: str = "orgs",
        leeway: float = 30.0,
        jwks_cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        if secret is None and not jwks_url:
            raise ConfigError("authentication needs a JWT secret or a JWKS URL")
        self._secret = secret
        self._jwks_url = jwks_url or None
        self._issuer = issuer or None
        self._audience = audience or None
        self._orgs_claim = orgs_claim
        self._leeway = leeway
        self._jwks_cache_seconds = jwks_cache_seconds
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._keys: list[tuple[str | None, jwt.PyJWK]] = []
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        try:
            header = _peek_header(token)
        except ValueError as exc:
            raise _invalid("malformed header", exc) from None
        alg = header.get("alg")
        if alg == "HS256" and self._secret is not None:
            key: Any = self._secret
        elif alg == "RS256" and self._jwks_url is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise _invalid("kid is not a string")
            key = await self._rsa_key(self._jwks_url, kid)
        else:
            raise _invalid(f"algorithm {str(alg)[:16]!r} not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(EXPIRED) from None
        except jwt.PyJWTError as exc:
            raise _invalid("rejected", exc) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise _invalid("empty sub")
        return Principal(sub=sub, roles=_roles(claims), orgs=_orgs(claims, self._orgs_claim))

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ------------------------------------------------------------------------------ JWKS

    async def _rsa_key(self, url: str, kid: str | None) -> RSAPublicKey:
        key = self._lookup(kid)
        if key is None or self._stale():
            async with self._lock:
                key = self._lookup(kid)
                if (key is None or self._stale()) and self._may_fetch():
                    await self._refresh(url)
                    key = self._lookup(kid)
        if key is None:
            raise _invalid("no JWKS key for the token")
        return key

    def _lookup(self, kid: str | None) -> RSAPublicKey | None:
        if kid is None:
            # No kid: acceptable only when the JWKS holds exactly one signing key.
            only = self._keys[0][1] if len(self._keys) == 1 else None
        else:
            only = next((k for key_id, k in self._keys if key_id == kid), None)
        if only is None or not isinstance(only.key, RSAPublicKey):
            return None
        return only.key

    def _stale(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._clock() - self._fetched_at >= self._jwks_cache_seconds

    def _may_fetch(self) -> bool:
        if self._last_attempt is None:
            return True
        return self._clock() - self._last_attempt >= MIN_REFETCH_INTERVAL

    async def _refresh(self, url: str) -> None:
        """Fetch the JWKS; on failure keep whatever keys were cached before."""
        self._last_attempt = self._clock()
        try:
            document = await self._fetch(url)
            keys = _parse_jwks(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %s", redact_url(url), _describe(exc))
            return
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("loaded %d signing key(s) from JWKS %s", len(keys), redact_url(url))

    async def _fetch(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JWKS_TIMEOUT))
        async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
            resp.raise_for_status()
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body.extend(chunk)
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        return json.loads(body)


def _parse_jwks(document: Any) -> list[tuple[str | None, jwt.PyJWK]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: list[tuple[str | None, jwt.PyJWK]] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        kid = entry.get("kid")
        try:
            jwk = jwt.PyJWK(entry, algorithm="RS256")
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unusable JWKS key %r: %s", kid, _describe(exc))
            continue
        if not isinstance(jwk.key, RSAPublicKey):
            log.warning("skipping JWKS key %r: not an RSA public key", kid)
            continue
        if jwk.key.key_size < MIN_RSA_BITS:
            log.warning("skipping JWKS key %r: %d-bit RSA is too short", kid, jwk.key.key_size)
            continue
        keys.append((kid if isinstance(kid, str) else None, jwk))
    return keys


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith(BEARER):
        raise AuthError(HEADER_MESSAGE)
    token = authorization[len(BEARER) :]
    if not token or _WHITESPACE.search(token):
        raise AuthError(HEADER_MESSAGE)
    if not token.isascii():  # a JWT is base64url; PyJWT would raise UnicodeEncodeError
        raise _invalid("token is not ASCII")
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid("token too long")
    return token


def _peek_header(token: str) -> dict[str, Any]:
    """The token's header, read only to choose the key: ``jwt.decode`` reads it again, and
    checks it and everything else. (``jwt.get_unverified_header`` decodes and checks all three
    parts, character by character, to read the first: a third of a token check, issue #19.)"""
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("not base64url JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("not a JSON object")
    return header


def _invalid(reason: str, exc: Exception | None = None) -> AuthError:
    # Debug only, and never the token: the reason is ours, the exception is named by its class.
    log.debug("token rejected: %s%s", reason, f" ({type(exc).__name__})" if exc else "")
    return AuthError(INVALID)


def _describe(exc: BaseException) -> str:
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
