"""streams.yaml applied to a real server: idempotent apply, drift reported by diff and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nats.aio.client import Client

from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.streams import StreamsSpec


async def test_apply_is_idempotent_and_diff_is_clean(nc: Client, prefix: str) -> None:
    spec = streams.load_spec(prefix)
    assert {d.field for d in await streams.diff(nc, spec)} == {"*"}  # nothing exists yet
    first = await streams.apply(nc, spec)
    assert f"created stream {prefix.upper()}_EVENTS" in first
    created = [c for c in first if c.startswith("created consumer")]
    assert len([c for c in created if "_PROC_" in c]) == spec.layout.partitions
    assert len([c for c in created if "_PROJ_" in c]) == len(spec.projectors)
    assert await streams.apply(nc, spec) == []
    assert await streams.diff(nc, spec) == []
    for cfg in spec.streams.values():
        await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"")


async def test_declared_event_stream_is_permanent_and_atomic(
    nc: Client, applied: StreamsSpec
) -> None:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{applied.event_stream}", b"")
    config = json.loads(msg.data)["config"]
    assert config["subjects"] == [f"{applied.layout.prefix}.events.>"]
    assert config["storage"] == "file"
    assert config["retention"] == "limits"
    assert config["max_age"] == 0
    assert config["deny_delete"] is True
    assert config["deny_purge"] is True
    assert config["allow_atomic"] is True
    msg = await nc.request(f"$JS.API.STREAM.INFO.{applied.command_stream}", b"")
    assert json.loads(msg.data)["config"]["retention"] == "workqueue"


async def test_drift_is_reported_then_repaired_by_apply(nc: Client, applied: StreamsSpec) -> None:
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{applied.command_stream}", b"")).data)
    changed = {**info["config"], "max_age": 7200 * 1_000_000_000}
    await nc.request(
        f"$JS.API.STREAM.UPDATE.{applied.command_stream}", json.dumps(changed).encode()
    )
    durable = applied.layout.processor_durable(0)
    await nc.request(f"$JS.API.CONSUMER.DELETE.{applied.command_stream}.{durable}", b"")

    drifts = await streams.diff(nc, applied)

    assert [(d.name, d.field) for d in drifts] == [
        (applied.command_stream, "max_age"),
        (durable, "*"),
    ]
    assert "max_age declared 3600000000000, server has 7200000000000" in str(drifts[0])
    changes = await streams.apply(nc, applied)
    assert changes == [f"updated stream {applied.command_stream}", f"created consumer {durable}"]
    assert await streams.diff(nc, applied) == []


async def test_partition_count_reduction_reports_undeclared_consumers(
    nc: Client, applied: StreamsSpec
) -> None:
    fewer = streams.load_spec(applied.layout.prefix, overrides={"partitions": 6})
    drifts = await streams.diff(nc, fewer)
    assert sorted(d.name for d in drifts if d.field == "+") == [
        applied.layout.processor_durable(6),
        applied.layout.processor_durable(7),
    ]


def _cli(args: list[str], nats_url: str, prefix: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": nats_url, "SUBJECT_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_streams_diff_exit_codes_and_apply(
    nats_url: str, prefix: str, nc: Client
) -> None:
    missing = _cli(["streams", "diff"], nats_url, prefix)
    assert missing.returncode == 1
    assert f"stream {prefix.upper()}_EVENTS: missing on the server" in missing.stdout

    applied = _cli(["streams", "apply"], nats_url, prefix)
    assert applied.returncode == 0, applied.stderr
    assert "created stream" in applied.stdout

    again = _cli(["streams", "apply"], nats_url, prefix)
    assert again.returncode == 0
    assert "(0 change(s))" in again.stdout

    clean = _cli(["streams", "diff"], nats_url, prefix)
    assert clean.returncode == 0
    assert "no drift" in clean.stdout
    for cfg in streams.load_spec(prefix).streams.values():
        await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"")


async def test_apply_deletes_projector_consumers_no_longer_declared(
    nc: Client, prefix: str
) -> None:
    """Earlier versions ran one consumer per read model; nothing reads those any more."""
    spec = streams.load_spec(prefix)
    await streams.apply(nc, spec)
    legacy = spec.projector_consumer("vouchers")
    assert legacy["durable_name"] == f"{prefix.upper()}_PROJ_VOUCHERS"
    answer = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{spec.event_stream}.{legacy['durable_name']}",
        json.dumps({"stream_name": spec.event_stream, "config": legacy}).encode(),
    )
    assert "error" not in json.loads(answer.data)
    assert [(d.name, d.field) for d in await streams.diff(nc, spec)] == [
        (legacy["durable_name"], "+")
    ]
    assert await streams.apply(nc, spec) == [
        f"deleted consumer {legacy['durable_name']} (no longer declared)"
    ]
    assert await streams.diff(nc, spec) == []
    for cfg in spec.streams.values():
        await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"")


async def test_diff_is_quiet_about_absent_memory_streams_serve_declares_at_start(
    nats_url: str, prefix: str, nc: Client
) -> None:
    """After a nats-server restart the memory-stored objects (the command stream with its
    processor consumers, the lease and guessing-limit buckets) are gone until serve starts
    again: not drift."""
    spec = streams.load_spec(prefix)
    await streams.apply(nc, spec)
    memory = [cfg["name"] for cfg in spec.streams.values() if cfg["storage"] == "memory"]
    assert sorted(memory) == sorted(
        [spec.command_stream, f"KV_{spec.lease_bucket}", f"KV_{spec.limits_bucket}"]
    )
    for name in memory:
        await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"")

    found = await streams.report(nc, spec)
    assert found.drifts == []
    assert sorted(found.absent_in_memory) == sorted(memory)
    quiet = _cli(["streams", "diff"], nats_url, prefix)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "missing on the server" not in quiet.stdout
    notes = [line for line in quiet.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, quiet.stdout
    assert all(name in notes[0] for name in memory)
    assert "no drift" in quiet.stdout
    # the library's diff still lists them, and a missing file-stored stream is still drift
    assert {d.name for d in await streams.diff(nc, spec) if d.field == "*"} >= set(memory)
    await nc.request(f"$JS.API.STREAM.DELETE.{spec.event_stream}", b"")
    loud = _cli(["streams", "diff"], nats_url, prefix)
    assert loud.returncode == 1
    assert f"stream {spec.event_stream}: missing on the server" in loud.stdout
    lines = loud.stdout.splitlines()
    assert not [line for line in lines if "COMMANDS" in line and not line.startswith("note: ")]
    for cfg in spec.streams.values():
        await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"")
