"""Servers a test owns so it can take them away: a PostgreSQL stopped with ``pg_ctl -m immediate``
(the postmaster and every backend die at once, as in a crash) and started again on the same
socket, and a nats-server killed with SIGKILL and started again on the same port and store."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voucher_ledger.service.embedded import EmbeddedNats, EmbeddedPostgres


class StoppablePostgres:
    """An embedded PostgreSQL (pgserver) of the test's own, with ``down()`` and ``up()``."""

    def __init__(self, where: Path) -> None:
        self._embedded = EmbeddedPostgres(where, database="outage")
        self.url = ""

    @property
    def _server(self) -> Any:
        return self._embedded._server

    def start(self) -> str:
        self.url = self._embedded.start()
        return self.url

    async def down(self) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        server = self._server
        await asyncio.to_thread(
            pg_ctl,
            ["-m", "immediate", "-w", "stop"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=30,
        )

    async def up(self) -> None:
        server = self._server
        await asyncio.to_thread(server.ensure_postgres_running)
        assert str(server.get_uri("outage")) == self.url, "PostgreSQL came back elsewhere"

    def stop(self) -> None:
        self._embedded.stop()


@contextlib.contextmanager
def own_postgres() -> Iterator[StoppablePostgres]:
    where = Path(tempfile.mkdtemp(prefix="vl-outage-pg-"))
    pg = StoppablePostgres(where)
    try:
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def own_nats() -> Iterator[EmbeddedNats]:
    """The wheel's nats-server on a port of its own: ``kill()`` (SIGKILL), then ``start()``
    brings it back on the same port with the same store."""
    where = Path(tempfile.mkdtemp(prefix="vl-outage-nats-"))
    server = EmbeddedNats(where)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(where, ignore_errors=True)
