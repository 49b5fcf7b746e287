"""``voucher-ledger``: serve, run processors, manage streams, read the event stream."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from voucher_ledger import __version__
from voucher_ledger.cli import audit as audit_cli
from voucher_ledger.cli import federation as federation_cli
from voucher_ledger.cli import importseed as import_cli
from voucher_ledger.cli import natscreds as nats_cli
from voucher_ledger.cli import orgmove as org_cli
from voucher_ledger.cli import replay as replay_cli
from voucher_ledger.cli import signing as signing_cli
from voucher_ledger.cli.common import UserError, loop_name, run_loop, stop_on_signals, tune_gc
from voucher_ledger.cli.logformat import formatter
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import PARENT_ENV, Settings
from voucher_ledger.jetstream.errors import StreamsError
from voucher_ledger.service.owner import DataDirLock, attach, check_port_free

log = logging.getLogger("voucher_ledger")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for name in ("host", "port", "data_dir", "catalog_file"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)  # type: ignore[arg-type]


def _logging(level: str, role: str = "", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, role))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # Neither format shows a record's source line, thread or process, so they are not collected
    # (the logging HOWTO, "Optimization"): the caller lookup walked the stack for every access
    # line and every checkout's line, a few per cent of serve's CPU in a checkout storm.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("asyncpg.pool").addFilter(_OutageLine())
    logging.getLogger("nats.aio.client").addFilter(_OutageLine())


class _OutageLine(logging.Filter):
    """asyncpg's pool and nats.py log a traceback each time they fail to reconnect. Keep one line
    (the error folded into the message) and at most one a minute of the same message."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self._every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args = None
            record.exc_info = None
        key = record.getMessage()
        last = self._last.get(key)
        if last is not None and record.created - last < self._every:
            return False
        self._last[key] = record.created
        return True


async def _serve(settings: Settings, owner: DataDirLock | None) -> int:
    # Imported here, not at the top: a refused start (the port, the data dir's owner) and the
    # operator jobs answer before the web stack is loaded (tests/e2e/test_ownership.py).
    from aiohttp import web

    from voucher_ledger.http.app import create_app, servers_of
    from voucher_ledger.http.server import app_runner

    stop = stop_on_signals()  # a SIGTERM during start-up stops cleanly once started
    app = create_app(settings, processors_in_child=settings.processor_process)
    runner = app_runner(app, access_log=None)
    try:
        await runner.setup()  # starts the components (http/app.py), then the HTTP server
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        if owner is not None:  # operator jobs find the servers through the data dir from now on
            started = servers_of(app)
            owner.publish(
                http=f"http://{settings.host}:{settings.port}",
                nats_url=started.nats_url,
                database_url=started.database_url,
            )
        log.info(
            "voucher-ledger listening on http://%s:%d (event loop: %s)",
            settings.host,
            settings.port,
            loop_name(),
        )
        log.info(
            "console: http://%s:%d/console/ (sign in with `voucher-ledger token`); public redeem "
            "page: /redeem",
            settings.host,
            settings.port,
        )
        tune_gc()
        await stop.wait()
        log.info("shutting down")
    finally:
        # The HTTP server first, then the components in reverse: the processors, nats-server,
        # PostgreSQL.
        await runner.cleanup()
    return 0


async def _processors(settings: Settings) -> int:
    settings = settings.model_copy(
        update={"run_processors": True, "run_projectors": False, "serve_http": False}
    )
    from voucher_ledger.service.stack import InProcessProcessors, NatsLink, ReadModels, Servers
    from voucher_ledger.service.worker import answer_reports, die_with_parent

    die_with_parent()  # started by `serve` (service/worker.py): go when it goes
    stop = stop_on_signals()  # a SIGTERM during start-up stops cleanly once started
    async with contextlib.AsyncExitStack() as stack:
        servers = await Servers.start(settings)
        stack.push_async_callback(servers.stop)
        link = await NatsLink.open(settings, servers.nats_url, servers.credentials("processors"))
        stack.push_async_callback(link.close)
        read = await ReadModels.open(servers.database_url)  # migrated, as `serve` does
        stack.push_async_callback(read.close)
        processors = await InProcessProcessors.start(settings, link)
        stack.push_async_callback(processors.stop)
        await answer_reports(link.nc, link.spec.layout.prefix, processors.host)
        tune_gc()
        await stop.wait()
    return 0


async def _streams(settings: Settings, action: str) -> int:
    from voucher_ledger.jetstream import streams
    from voucher_ledger.jetstream.connection import NatsCredentials, connect_nats
    from voucher_ledger.service.stack import load_spec

    assert settings.nats_url is not None  # attach() gave the running owner's when unset
    nc = await connect_nats(
        settings.nats_url,
        startup_timeout=settings.nats_connect_timeout,
        credentials=NatsCredentials.from_settings(settings),
    )
    try:
        spec = load_spec(settings)
        if action == "apply":
            changes = await streams.apply(nc, spec)
            for line in changes:
                print(line)
            print(f"streams up to date ({len(changes)} change(s))")
            return 0
        found = await streams.report(nc, spec)
        drifts = found.drifts
        for drift in drifts:
            print(drift)
        if found.absent_in_memory:
            print(
                f"note: {', '.join(found.absent_in_memory)} (memory storage) not on the "
                "server: serve declares them at start; not counted as drift"
            )
        if drifts:
            print(f"{len(drifts)} difference(s) between streams.yaml and the server")
            return 1
        print("no drift")
        return 0
    finally:
        await nc.close()


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from voucher_ledger.http.auth import ConfigError, mint_token, read_secret

    try:  # never a new secret: a token only the running service accepts is worth printing
        secret = read_secret(settings)
    except ConfigError as exc:
        print(f"voucher-ledger: {exc}", file=sys.stderr)
        return 1
    print(mint_token(secret, args.sub, args.role, ttl=args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voucher-ledger",
        description="An event-sourced voucher and credit ledger: serve the API, run the command "
        "processors, manage the JetStream streams, read and replay the event stream.",
    )
    parser.add_argument("--version", action="version", version=f"voucher-ledger {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir", type=Path, default=None, help="embedded data (./.voucher-ledger)"
        )

    serve = sub.add_parser("serve", help="run the HTTP API, processors and embedded servers")
    serve.add_argument("--host", default=None, help="bind address (127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (8080)")
    serve.add_argument(
        "--catalog",
        dest="catalog_file",
        type=Path,
        default=None,
        help="plans and addons YAML (default: CATALOG_URL, else the shipped sample catalog)",
    )
    common(serve)

    procs = sub.add_parser("processors", help="run command processors only (no HTTP)")
    common(procs)

    tok = sub.add_parser("token", help="print a bearer token signed with the configured secret")
    tok.add_argument("--sub", required=True, help="the token's subject (user id)")
    tok.add_argument("--role", required=True, help="e.g. superadmin, sovereign-admin, member")
    tok.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    common(tok)

    st = sub.add_parser(
        "streams",
        help="the JetStream streams and consumers declared in streams.yaml",
        description="Manage the JetStream streams, consumers and buckets that streams.yaml "
        "declares, on the running service's nats-server (or NATS_URL).",
    )
    st_sub = st.add_subparsers(dest="action", required=True, metavar="{apply,diff}")
    st_apply = st_sub.add_parser(
        "apply",
        help="create or update them (idempotent; serve also does it at every start)",
        description="Create every stream, consumer and bucket of streams.yaml that is missing "
        "and update those whose configuration differs. Idempotent: serve does the same at "
        "every start. Prints each change.",
    )
    st_diff = st_sub.add_parser(
        "diff",
        help="print each difference from the server; exit 1 if there is any",
        description="Compare streams.yaml with the server and print every difference (a "
        "missing or extra object, a field that differs); changes nothing. The memory-stored "
        "command stream and the lease and limit buckets, which serve declares at every start, "
        "are only noted when absent. Exit status 1 when there is a difference, 0 when there "
        "is none.",
    )
    common(st_apply)
    common(st_diff)

    audit_cli.add_parsers(sub, common)  # audit tail, show (time travel), schema export/check
    replay_cli.add_parsers(sub, common)  # rebuild, verify
    import_cli.add_parsers(sub, common)  # import-seed
    org_cli.add_parsers(sub, common)  # org export, org import
    signing_cli.add_parsers(sub, common)  # signing-key
    nats_cli.add_parsers(sub, common)  # nats creds
    federation_cli.add_parsers(sub, common)  # federation check (at the hub)
    return parser


# The servers each operator job needs (``schema`` needs none).
_NEEDS: dict[str, tuple[str, ...]] = {
    "streams": ("nats",),
    "audit": ("nats",),
    "show": ("nats",),
    "processors": ("nats", "postgres"),
    "verify": ("nats", "postgres"),
    "rebuild": ("nats", "postgres"),
    "import-seed": ("nats",),
    "org": ("nats",),
    "federation": ("nats",),
}


# The NATS identity each operator job takes on the embedded default (jetstream/auth.py).
_ROLES: dict[str, str] = {
    "streams": "admin",
    "audit": "subscriber",
    "show": "subscriber",
    "processors": "processors",
    "verify": "service",
    "rebuild": "service",
    "import-seed": "processors",  # it appends events, as the processors do
    "org": "processors",  # export records the move, import appends the account's events
    "federation": "admin",  # reads the trail and, across their domains, the Sovereigns' streams
}


def _serve_owning(settings: Settings) -> int:
    """``serve``: the data dir's lock (when it starts embedded servers) and the HTTP port are
    taken before anything starts, so a second ``serve`` changes nothing."""
    check_port_free(settings.host, settings.port)
    owner = None
    if settings.embedded_nats or settings.embedded_postgres:
        owner = DataDirLock(settings.data_dir)
        owner.acquire()
    try:
        return run_loop(_serve(settings, owner), settings)
    finally:
        if owner is not None:
            owner.release()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except Exception as exc:  # noqa: BLE001 - pydantic's error text is what the operator needs
        print(f"voucher-ledger: invalid settings: {exc}", file=sys.stderr)
        return 2
    # serve's processor process logs to the same terminal: its lines say so.
    started_by_serve = args.command == "processors" and PARENT_ENV in os.environ
    _logging(settings.log_level, "processors" if started_by_serve else "", settings.log_format)
    if args.command == "token":
        if args.ttl <= 0 or args.ttl > 31 * 24 * 3600:
            print("voucher-ledger: --ttl must be between 1 and 2678400 seconds", file=sys.stderr)
            return 2
        return _token(settings, args)
    try:
        # Operator jobs on the embedded default use the running owner's servers, never their own.
        needs = _NEEDS.get(args.command)
        if needs is not None:
            settings = attach(
                settings,
                nats="nats" in needs,
                postgres="postgres" in needs,
                role=_ROLES[args.command],
            )
        if args.command in audit_cli.COMMANDS:
            return audit_cli.run(args, settings)
        if args.command in replay_cli.COMMANDS:
            return replay_cli.run(args, settings)
        if args.command in import_cli.COMMANDS:
            return import_cli.run(args, settings)
        if args.command in org_cli.COMMANDS:
            return org_cli.run(args, settings)
        if args.command in signing_cli.COMMANDS:
            return signing_cli.run(args, settings)
        if args.command in nats_cli.COMMANDS:
            return nats_cli.run(args, settings)
        if args.command in federation_cli.COMMANDS:
            return federation_cli.run(args, settings)
        if args.command == "serve":
            return _serve_owning(settings)
        if args.command == "processors":
            return run_loop(_processors(settings), settings)
        return run_loop(_streams(settings, args.action), settings)
    except (StartupError, UserError) as exc:
        print(f"voucher-ledger: {exc}", file=sys.stderr)
        return 1
    except StreamsError as exc:
        print(f"voucher-ledger: streams: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
