"""One owner per data dir, and the operator jobs that attach to it.

The process that starts the embedded servers (``voucher-ledger serve``) takes an exclusive
``flock`` on ``DATA_DIR/owner.lock`` before it starts or touches anything, and holds it for its
whole life (the kernel releases it when the process ends, however it ends: no stale lock after a
``kill -9``). Once its servers are up it writes ``DATA_DIR/owner.json`` (mode 0600): its pid, its
HTTP address and the URLs of its nats-server and PostgreSQL.

A second ``serve`` on the same data dir finds the lock taken and refuses at once, naming the
owner. An operator job (``streams``, ``processors``, ``audit tail``, ``show``, ``verify``,
``rebuild``) on the embedded default never starts a server of its own: :func:`attach` reads the
owner's URLs and the job uses them, with its NATS identity from ``DATA_DIR/nats/auth`` (the
embedded nats-server requires one: ``jetstream/auth.py``); with no owner running it fails in one
line.

The embedded nats-server cannot be started twice on the store by hand either: its configuration
file names the owner's port, which a second server cannot bind; PostgreSQL refuses a second
postmaster on its data directory by itself (``postmaster.pid``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings
from voucher_ledger.jetstream.auth import read_user

LOCK_FILE = "owner.lock"
OWNER_FILE = "owner.json"


@dataclass(frozen=True)
class Owner:
    """What a running owner wrote down about itself."""

    pid: int
    http: str | None
    nats_url: str | None
    database_url: str | None
    started_at: float


class NotRunning(StartupError):
    """No voucher-ledger owns the data dir: the job needs its servers."""


def _lock_path(data_dir: Path) -> Path:
    return data_dir.resolve() / LOCK_FILE


def _owner_path(data_dir: Path) -> Path:
    return data_dir.resolve() / OWNER_FILE


def read_owner(data_dir: Path) -> Owner | None:
    try:
        raw = json.loads(_owner_path(data_dir).read_text())
        return Owner(
            pid=int(raw["pid"]),
            http=raw.get("http"),
            nats_url=raw.get("nats_url"),
            database_url=raw.get("database_url"),
            started_at=float(raw.get("started_at", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe(data_dir: Path, owner: Owner | None, holder: int | None) -> str:
    pid = owner.pid if owner is not None else holder
    who = f"pid {pid}" if pid else "another process"
    where = f", {owner.http}" if owner is not None and owner.http else ""
    return (
        f"{data_dir} is in use by voucher-ledger ({who}{where}); stop it first, or give this "
        "one another --data-dir"
    )


def _lock_holder(path: Path) -> int | None:
    """The pid written in the lock file by its holder (informational only)."""
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class DataDirLock:
    """The exclusive lock of the process that owns a data dir's embedded servers."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`StartupError` naming the owner."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = _lock_path(self.data_dir)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise StartupError(f"cannot lock {path}: {exc.strerror}") from exc
            raise StartupError(
                _describe(self.data_dir, read_owner(self.data_dir), _lock_holder(path))
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        # A previous owner's address is stale from here on.
        with contextlib.suppress(FileNotFoundError):
            _owner_path(self.data_dir).unlink()

    def publish(self, *, http: str | None, nats_url: str, database_url: str) -> None:
        """Write ``owner.json`` (0600, atomically) once the servers are up."""
        owner = Owner(os.getpid(), http, nats_url, database_url, time.time())
        path = _owner_path(self.data_dir)
        tmp = path.with_name(f".{OWNER_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(owner), out)
        os.replace(tmp, path)

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is None:
            return
        with contextlib.suppress(FileNotFoundError):
            _owner_path(self.data_dir).unlink()
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
        handle.close()  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._file is not None


def is_owned(data_dir: Path) -> bool:
    """Whether a live process holds the data dir's lock (it need not have published yet)."""
    path = _lock_path(data_dir)
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def not_running_message(data_dir: Path) -> str:
    return (
        f"no voucher-ledger is running on {data_dir}; start `voucher-ledger serve` first, or "
        "set NATS_URL/DATABASE_URL"
    )


def attach(
    settings: Settings,
    *,
    nats: bool = True,
    postgres: bool = True,
    wait: float = 5.0,
    role: str = "service",
) -> Settings:
    """The settings an operator job runs with: unchanged when the servers it needs (``nats``,
    ``postgres``) have their URLs set; otherwise the running owner's, found through the data
    dir, and for NATS the identity of ``role`` (``jetstream.auth.ROLES``) that the owner's
    embedded nats-server was started with (``DATA_DIR/nats/auth``). Raises :class:`NotRunning`
    (one line) when nobody owns it; waits up to ``wait`` seconds for an owner that is still
    starting to publish its addresses."""
    if not (nats and settings.embedded_nats) and not (postgres and settings.embedded_postgres):
        return settings
    data_dir = settings.data_dir
    deadline = time.monotonic() + wait
    while True:
        if not is_owned(data_dir):
            raise NotRunning(not_running_message(data_dir))
        owner = read_owner(data_dir)
        if owner is not None and owner.nats_url and owner.database_url:
            break
        if time.monotonic() >= deadline:
            raise NotRunning(
                f"voucher-ledger on {data_dir} is still starting; try again in a moment"
            )
        time.sleep(0.1)
    update: dict[str, object] = {}
    if nats and settings.embedded_nats:
        update["nats_url"] = owner.nats_url
        user = read_user(data_dir.resolve() / "nats", role)
        update.update(
            nats_user=user.user if user is not None else None,
            nats_password=SecretStr(user.password) if user is not None else None,
            nats_token=None,
            nats_creds=None,
            nats_nkey_seed=None,
        )
    if postgres and settings.embedded_postgres:
        update["database_url"] = owner.database_url
    return settings.model_copy(update=update)


def check_port_free(host: str, port: int) -> None:
    """Refuse at once, before anything starts, when the HTTP port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # as aiohttp binds: SO_REUSEADDR, so a port in TIME_WAIT is free and a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
            raise StartupError(
                f"port {port} on {host} {reason} (another voucher-ledger serve, or another "
                "program); choose another with --port or PORT"
            ) from None
