"""``voucher-ledger audit tail`` and ``voucher-ledger show`` as real processes against the test
nats-server: output, resume, Ctrl-C, and a one-line error (never a traceback) for bad input."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from tests.conftest import HostFactory
from tests.e2e.helpers import clean_env
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.commands import IssueVoucher, RedeemVoucher, RevokeVoucher
from voucher_ledger.ledger.events import Actor, EventEnvelope
from voucher_ledger.ledger.voucher import VoucherCommandT

ADMIN = Actor(sub="admin", role="superadmin")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def cli_env(nats_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return clean_env(NATS_URL=nats_url, SUBJECT_PREFIX=prefix, LOG_LEVEL="WARNING", **extra)


async def cli(env: dict[str, str], *args: str) -> Run:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


async def accepted(bus: CommandBus, command: VoucherCommandT) -> Accepted:
    reply = await bus.send(command, actor=ADMIN)
    assert isinstance(reply, Accepted), reply
    return reply


@pytest.fixture
async def history(make_host: HostFactory, bus: CommandBus, applied: StreamsSpec) -> list[Accepted]:
    """Issue, update, redeem twice and revoke one code, with another code in between."""
    await make_host()
    return [
        await accepted(bus, IssueVoucher(code="CLI-1", credit_baisa=5000, max_redemptions=5)),
        await accepted(
            bus, IssueVoucher(code="CLI-2", credit_baisa=1000, description="two\x1b[31m\nx")
        ),
        await accepted(bus, IssueVoucher(code="CLI-1", credit_baisa=7000, description="upd")),
        await accepted(bus, RedeemVoucher(code="CLI-1", customer_id="u-1")),
        await accepted(bus, RedeemVoucher(code="CLI-1", customer_id="u 2")),
        await accepted(bus, RevokeVoucher(code="CLI-1")),
    ]


async def test_tail_json_no_follow_prints_every_event_in_order(
    nats_url: str, applied: StreamsSpec, history: list[Accepted], store: JetStreamEventStore
) -> None:
    env = cli_env(nats_url, applied.layout.prefix)
    run = await cli(env, "audit", "tail", "--json", "--no-follow")
    assert run.code == 0, run.err
    records = run.json_lines
    assert [r["seq"] for r in records] == [reply.seq for reply in history]
    stored = await store.load(applied.layout.voucher_subject("CLI-1"))
    by_seq = {r.seq: r.envelope for r in stored}
    for record in records:
        envelope = EventEnvelope.model_validate(record["envelope"])
        assert record["subject"] == applied.layout.voucher_subject(envelope.aggregate_id)
        if record["seq"] in by_seq:
            assert envelope == by_seq[record["seq"]]


async def test_tail_human_lines_and_filters(
    nats_url: str, applied: StreamsSpec, history: list[Accepted]
) -> None:
    env = cli_env(nats_url, applied.layout.prefix)
    run = await cli(
        env, "audit", "tail", "--no-follow", "--code", " cli-1 ", "--type", "voucher.redeemed"
    )
    assert run.code == 0, run.err
    assert len(run.lines) == 2
    first, second = run.lines
    assert first.split()[0] == str(history[3].seq)
    assert "voucher.redeemed" in first
    assert "voucher:CLI-1" in first
    assert "customer_id=u-1" in first
    assert "credit_baisa=7000" in first
    assert "by admin/superadmin" in first
    assert 'customer_id="u 2"' in second  # a value with spaces is JSON-quoted

    limited = await cli(env, "audit", "tail", "--from-seq", str(history[2].seq), "--limit", "2")
    assert [int(line.split()[0]) for line in limited.lines] == [history[2].seq, history[3].seq]

    other = await cli(env, "audit", "tail", "--no-follow", "--code", "CLI-2")
    assert [int(line.split()[0]) for line in other.lines] == [history[1].seq]
    # Control characters are escaped: no escape sequence or line break reaches a terminal.
    assert 'description="two\\u001b[31m\\nx"' in other.out
    assert "\x1b" not in other.out


async def test_tail_durable_resumes_across_runs(
    nats_url: str, applied: StreamsSpec, history: list[Accepted], bus: CommandBus
) -> None:
    env = cli_env(nats_url, applied.layout.prefix)
    seqs = [reply.seq for reply in history]
    first = await cli(env, "audit", "tail", "--json", "--durable", "ops", "--limit", "2")
    assert [r["seq"] for r in first.json_lines] == seqs[:2]
    later = await accepted(bus, IssueVoucher(code="CLI-3", credit_baisa=1000))
    second = await cli(env, "audit", "tail", "--json", "--durable", "ops", "--no-follow")
    assert [r["seq"] for r in second.json_lines] == [*seqs[2:], later.seq]
    third = await cli(env, "audit", "tail", "--json", "--durable", "ops", "--no-follow")
    assert third.lines == []


async def test_tail_follows_new_events_until_ctrl_c(
    nats_url: str, applied: StreamsSpec, history: list[Accepted], bus: CommandBus
) -> None:
    env = cli_env(nats_url, applied.layout.prefix)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voucher_ledger.cli",
        "audit",
        "tail",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:

        async def next_seq() -> int:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "audit tail ended early"
            return int(json.loads(line)["seq"])

        assert [await next_seq() for _ in history] == [reply.seq for reply in history]
        live = await accepted(bus, RedeemVoucher(code="CLI-2", customer_id="live"))
        assert await next_seq() == live.seq
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        err = (await proc.stderr.read()).decode()
        assert "Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_show_past_states(
    nats_url: str, applied: StreamsSpec, history: list[Accepted], store: JetStreamEventStore
) -> None:
    env = cli_env(nats_url, applied.layout.prefix)
    issued, _, updated, redeemed, _, revoked = history
    run = await cli(env, "show", "cli-1", "--seq", str(redeemed.seq), "--json")
    assert run.code == 0, run.err
    body = json.loads(run.out)
    assert redeemed.voucher is not None
    assert body == {
        "code": "CLI-1",
        "credit_omr": 7,
        "credit_baisa": 7000,
        "description": "upd",
        "active": True,
        "max_redemptions": 5,
        "times_redeemed": 1,
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
        "starts_at": None,
        "expires_at": None,
        "plans": None,
        "min_order_omr": 0,
        "min_order_baisa": 0,
        "new_organizations_only": False,
        "credit_valid_for": None,
        "revoked": False,
        "revoked_at": None,
        "accepting_redemptions": True,
        "last_seq": redeemed.seq,
        # issue #21: what it gives
        "kind": "credit",
        "percent_off": None,
        "amount_off_omr": None,
        "amount_off_baisa": None,
        "applies_to": None,
        "duration": None,
        "summary": "7 OMR credit",
    }
    assert datetime.fromisoformat(body["updated_at"]) == redeemed.voucher.updated_at

    events = await store.load(applied.layout.voucher_subject("CLI-1"))
    at_update = events[1].envelope.occurred_at.isoformat().replace("+00:00", "Z")
    run = await cli(env, "show", "CLI-1", "--at", at_update, "--json")
    body = json.loads(run.out)
    assert (body["credit_baisa"], body["times_redeemed"], body["last_seq"]) == (
        7000,
        0,
        updated.seq,
    )

    now = await cli(env, "show", "CLI-1")
    assert now.code == 0, now.err
    assert "CLI-1 (current)" in now.out
    assert "revoked      yes (at " in now.out
    assert "redemptions  2 of 5" in now.out
    assert "valid until  no end" in now.out
    assert "plans        any" in now.out

    first = await cli(env, "show", "CLI-1", "--seq", str(issued.seq))
    assert "credit       5 OMR (5000 baisa)" in first.out
    assert f"at stream sequence {issued.seq}" in first.out
    assert revoked.seq == events[-1].seq


async def test_show_and_tail_refuse_bad_input_with_one_line(
    nats_url: str, applied: StreamsSpec, history: list[Accepted], nc: Client
) -> None:
    env = cli_env(nats_url, applied.layout.prefix)
    early = datetime(2020, 1, 1, tzinfo=UTC).isoformat()
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("show", "CLI-1", "--at", early), 1, "did not exist at 2020-01-01T00:00:00Z"),
        (("show", "NOPE-1"), 1, "voucher NOPE-1 did not exist (no events)"),
        (("show", "a.b"), 2, "invalid code"),
        (("show", "CLI-1", "--at", "yesterday"), 2, "ISO 8601"),
        (("show", "CLI-1", "--at", "2026-01-01T00:00:00"), 2, "time zone"),
        (("show", "CLI-1", "--seq", "0"), 2, "--seq must be a whole number >= 1"),
        (("show", "CLI-1", "--seq", "1", "--at", early), 2, "not allowed with"),
        (("audit", "tail", "--from-seq", "-3"), 2, "--from-seq must be a whole number"),
        (("audit", "tail", "--since", "soon"), 2, "ISO 8601"),
        (("audit", "tail", "--type", "voucher.exploded"), 2, "unknown event type"),
        (("audit", "tail", "--code", "*"), 2, "--code"),
        (("audit", "tail", "--customer", ""), 2, "--customer must not be empty"),
        (("audit", "tail", "--durable", "a.b"), 2, "--durable"),
        (("audit", "tail", "--limit", "x"), 2, "--limit must be a whole number"),
    ]
    for args, code, message in cases:
        run = await cli(env, *args)
        assert (run.code, run.out) == (code, ""), (args, run)
        assert message in run.err, (args, run.err)

    wrong_prefix = cli_env(nats_url, "nosuchprefix")
    run = await cli(wrong_prefix, "audit", "tail", "--no-follow")
    assert run.code == 1
    assert "event stream NOSUCHPREFIX_EVENTS not found" in run.err
    run = await cli(wrong_prefix, "show", "CLI-1")
    assert run.code == 1
    assert "NOSUCHPREFIX_EVENTS" in run.err

    run = await cli(cli_env("nats://127.0.0.1:1", applied.layout.prefix), "show", "CLI-1")
    assert run.code == 1
    assert "cannot connect to NATS at nats://127.0.0.1:1" in run.err
    nowhere = {k: v for k, v in cli_env(nats_url, applied.layout.prefix).items() if k != "NATS_URL"}
    run = await cli(nowhere, "audit", "tail", "--data-dir", f"/nonexistent/{uuid.uuid4().hex}")
    assert run.code == 1
    assert "no voucher-ledger is running on /nonexistent/" in run.err

    # An event this build cannot read stops the tail with a clear message.
    subject = applied.layout.voucher_subject("CLI-1")
    await nc.jetstream().publish(subject, b'{"event": {"type": "voucher.issued", "version": 9}}')
    run = await cli(env, "audit", "tail", "--no-follow")
    assert run.code == 1
    assert len(run.lines) == len(history)
    assert "cannot be read: voucher.issued v9 is newer than this build" in run.err
