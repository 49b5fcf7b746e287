"""The same adapters against servers in containers, where a Docker daemon answers.

On machines without Docker (CI here) these tests skip with the reason; the embedded and
external-URL paths above cover the same code.
"""

from __future__ import annotations

import pytest


def _docker_available() -> str | None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - any failure means "no daemon"
            reason = f"no Docker daemon answers ({type(exc).__name__})"
        else:
            reason = None
        import gc

        gc.collect()  # the failed probe's socket is closed here, inside the filter
    return reason


_REASON = _docker_available()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


async def test_event_store_round_trip_on_a_nats_container() -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    from tests.conftest import connect
    from tests.integration.test_eventstore import issued
    from voucher_ledger.commands.eventstore import JetStreamEventStore
    from voucher_ledger.jetstream import streams

    with DockerContainer("nats:2.12-alpine").with_command("-js").with_exposed_ports(4222) as box:
        wait_for_logs(box, "Server is ready")
        url = f"nats://{box.get_container_host_ip()}:{box.get_exposed_port(4222)}"
        nc = await connect(url)
        try:
            spec = streams.load_spec("tc")
            await streams.apply(nc, spec)
            store = JetStreamEventStore(nc, spec.event_stream)
            subject = spec.layout.voucher_subject("CONTAINER1")
            recorded = await store.append(subject, 0, [issued("CONTAINER1")])
            assert await store.load(subject) == recorded
        finally:
            await nc.close()


async def test_postgres_container_accepts_connections() -> None:
    import asyncpg
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as pg:
        conn = await asyncpg.connect(pg.get_connection_url())
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
