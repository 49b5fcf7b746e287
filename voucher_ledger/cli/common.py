"""What the command groups share: one-line user errors, the connection to the running
service's NATS, the streams declaration, the event loop every command runs on, and the process
tuning of long-running commands."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from voucher_ledger.config.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)

PROG = "voucher-ledger"

T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def nats_url(settings: Settings) -> str:
    """NATS_URL: set, or the running owner's (``service.owner.attach`` filled it in)."""
    if not settings.nats_url:
        raise UserError(f"NATS_URL is not set and no voucher-ledger runs on {settings.data_dir}")
    return settings.nats_url


async def connect(url: str, settings: Settings | None = None) -> Client:
    """Connect (no tracebacks in the log, a clear error after a few seconds), as the identity
    ``settings`` give; once connected, reconnect forever like the service does, so a long
    ``audit tail`` survives a NATS restart."""
    from voucher_ledger.config.errors import StartupError
    from voucher_ledger.jetstream.connection import NatsCredentials, connect_nats

    credentials = NatsCredentials.from_settings(settings) if settings is not None else None

    async def quiet(exc: Exception) -> None:
        log.debug("nats: %r", exc)

    try:
        return await connect_nats(
            url,
            name="voucher-ledger-audit",
            error_cb=quiet,
            startup_timeout=5.0,
            credentials=credentials,
        )
    except StartupError as exc:
        raise UserError(str(exc)) from exc


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Client]:
    nc = await connect(nats_url(settings), settings)
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


def load_streams(settings: Settings) -> Any:
    from voucher_ledger.service.stack import load_spec

    try:
        return load_spec(settings)
    except Exception as exc:  # a bad STREAMS_FILE: its error is the message
        raise UserError(f"cannot load the streams declaration: {exc}") from exc


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """EVENT_LOOP -> the loop's name and what makes one (None: asyncio's own). ``auto`` takes
    uvloop where it can be imported; ``uvloop`` where it cannot is a :class:`UserError`."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise UserError(f"EVENT_LOOP=uvloop, but uvloop cannot be imported: {exc}") from exc
        return "asyncio", None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return "uvloop", factory


def run_loop(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """``asyncio.run(main)`` on the event loop the settings choose (:func:`loop_factory`)."""
    try:
        name, factory = loop_factory(settings.event_loop)
    except UserError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    log.debug("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The running event loop's library: ``uvloop`` or ``asyncio``."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, from now on (install it before a long start-up, so a
    signal during it ends the process cleanly once started instead of killing it half-way)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def tune_gc() -> None:
    """After start-up: move everything alive now (modules, models, the stack) out of the cyclic
    GC's reach and collect the young generation less often. The cached aggregate states are
    long-lived and mostly acyclic; the collector walking them was ~9 % of a storm's CPU and
    the source of one-off latency spikes (bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
