"""CLI commands over the event stream: ``audit tail``, ``show`` (time travel) and ``schema``.

Registered by ``cli.py`` (:func:`add_parsers`, :func:`run`). User errors print one line on
stderr and exit 1 (2 for bad arguments); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from voucher_ledger.cli.common import PROG, UserError, connected, load_streams, run_loop
from voucher_ledger.config.settings import Settings
from voucher_ledger.ledger.money import BAISA

log = logging.getLogger(__name__)

COMMANDS = ("audit", "show", "schema")
# ------------------------------------------------------------------------------------- parsers


def _positive(name: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 1")
        return int(raw)

    return parse


def _timestamp(raw: str) -> datetime:
    from voucher_ledger.projections.timetravel import BadTimestamp, parse_timestamp

    try:
        return parse_timestamp(raw, name="the time")
    except BadTimestamp as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parsers(
    sub: Any,
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``audit``, ``show`` and ``schema`` to the ``voucher-ledger`` sub-parsers."""
    audit = sub.add_parser("audit", help="read the event stream as an audit subscriber")
    audit_sub = audit.add_subparsers(dest="audit_action", required=True)
    tail = audit_sub.add_parser(
        "tail",
        help="print every event in stream order (Ctrl-C to stop)",
        description=(
            "Print the event stream, one line per event: stream sequence, time, type, "
            "aggregate id and the event's fields (or JSON lines with --json). Runs until "
            "Ctrl-C unless --no-follow or --limit is given. Every event's signature is "
            "checked with the ledger's public key (SIGNING_PUBLIC_KEY_FILE, or the data dir's); "
            "the first that fails stops the tail with exit 1, naming its stream sequence. "
            "NATS_URL and SUBJECT_PREFIX come from the environment; without NATS_URL the "
            "embedded server of a running `voucher-ledger serve` (--data-dir) is used."
        ),
    )
    tail.add_argument(
        "--code", action="append", default=[], help="only this voucher code (repeatable)"
    )
    tail.add_argument(
        "--customer",
        action="append",
        default=[],
        help="only this account's wallet (an Organization; repeatable)",
    )
    tail.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="only events of this type, e.g. voucher.redeemed (repeatable)",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--from-seq", type=_positive("--from-seq"), help="start at this stream sequence"
    )
    start.add_argument(
        "--since", type=_timestamp, help="start at this time (ISO 8601 with a time zone)"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--durable",
        help="resume from (and keep) this durable consumer's position; start options only "
        "apply when it is first created",
    )
    tail.add_argument(
        "--limit", type=_positive("--limit"), help="stop after printing this many events"
    )
    tail.add_argument(
        "--no-follow",
        action="store_true",
        help="stop at the stream's current head instead of waiting for new events",
    )
    common(tail)

    show = sub.add_parser(
        "show",
        help="a voucher's state, now or as of a past moment, folded from the event stream",
        description=(
            "Fold the voucher's events from the stream up to --at (events with occurred_at <= "
            "the time) or --seq (stream sequence, inclusive); the current state without either."
        ),
    )
    show.add_argument("code", help="the voucher code")
    when = show.add_mutually_exclusive_group()
    when.add_argument("--at", type=_timestamp, help="ISO 8601 time with a time zone")
    when.add_argument("--seq", type=_positive("--seq"), help="a stream sequence")
    show.add_argument("--json", action="store_true", help="the GET /billing/vouchers/{code} body")
    common(show)

    schema = sub.add_parser("schema", help="the published event schemas and AsyncAPI document")
    schema_sub = schema.add_subparsers(dest="schema_action", required=True)
    export = schema_sub.add_parser(
        "export",
        help="write DIR/schemas/*.json, DIR/asyncapi.yaml and DIR/events.md's reference",
    )
    export.add_argument("dir", type=Path, help="output directory (the repository's docs/)")
    check = schema_sub.add_parser("check", help="exit 1 if DIR differs from the event models")
    check.add_argument("dir", type=Path, help="the directory an export wrote (docs/)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from voucher_ledger.jetstream import fastpaths  # here: see cli/main.py's serve

    fastpaths.configure(settings.fast_paths)
    try:
        if args.command == "schema":
            return _schema(args)
        if args.command == "show":
            return run_loop(_show(args, settings), settings)
        return run_loop(_tail(args, settings), settings)
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code


# -------------------------------------------------------------------------------------- schema


def _schema(args: argparse.Namespace) -> int:
    from voucher_ledger.published import eventdocs

    root: Path = args.dir
    if args.schema_action == "export":
        try:
            changes = eventdocs.export(root)
        except (eventdocs.ExportError, OSError) as exc:
            raise UserError(f"schema export: {exc}") from exc
        for line in changes:
            print(line)
        print(f"{len(eventdocs.event_docs())} event type(s); {len(changes)} file(s) changed")
        return 0
    problems = eventdocs.check(root)
    for line in problems:
        print(line)
    if problems:
        print(f"out of date with the event models: run `{PROG} schema export {root}`")
        return 1
    print("schemas up to date")
    return 0


# ---------------------------------------------------------------------------------------- show


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    from voucher_ledger.commands.eventstore import EventStoreError, JetStreamEventStore
    from voucher_ledger.ledger.codes import normalise_code
    from voucher_ledger.ledger.errors import InvalidInput
    from voucher_ledger.ledger.events import isoformat_z
    from voucher_ledger.projections.timetravel import voucher_as_of

    try:
        code = normalise_code(args.code)
    except InvalidInput as exc:
        raise UserError(f"invalid code: {exc.message}", 2) from exc
    spec = load_streams(settings)
    async with connected(settings) as nc:
        store = JetStreamEventStore(nc, spec.event_stream)
        try:
            await store.last_sequence()  # the stream exists and answers
            state = await voucher_as_of(store, spec.layout, code, at=args.at, seq=args.seq)
        except EventStoreError as exc:
            raise UserError(f"event stream {spec.event_stream}: {exc}") from exc
        except _client_errors() as exc:
            raise UserError(
                f"event stream {spec.event_stream} did not answer ({type(exc).__name__}); "
                "is SUBJECT_PREFIX right?"
            ) from exc
    when = ""
    if args.at is not None:
        when = f" at {isoformat_z(args.at)}"
    elif args.seq is not None:
        when = f" at stream sequence {args.seq}"
    if state is None:
        raise UserError(f"voucher {code} did not exist{when or ' (no events)'}")
    if args.json:
        from voucher_ledger.http.models import VoucherDetail

        print(VoucherDetail.model_validate(state.detail()).model_dump_json())
        return 0
    v = state.view
    cap = str(v.max_redemptions) if v.max_redemptions else "unlimited"
    lines = [
        f"{v.code}{when or ' (current)'}, after {state.events} event(s), last seq {v.last_seq}",
        f"  credit       {v.credit_baisa // BAISA} OMR ({v.credit_baisa} baisa)",
        f"  description  {_safe(v.description)}",
        f"  active       {_yes(v.active)}",
        f"  revoked      {_yes(v.revoked)}"
        + (f" (at {isoformat_z(state.revoked_at)})" if state.revoked_at else ""),
        f"  redemptions  {v.times_redeemed} of {cap}",
        f"  valid from   {isoformat_z(v.starts_at) if v.starts_at else 'always'}",
        f"  valid until  {isoformat_z(v.expires_at) if v.expires_at else 'no end'}",
        f"  plans        {', '.join(_safe(p) for p in v.plans) if v.plans else 'any'}",
        f"  min order    {v.min_order_baisa // BAISA} OMR"
        if v.min_order_baisa
        else "  min order    none",
        f"  new orgs     {'only' if v.new_organizations_only else 'not required'}",
        f"  credit lasts {_lasts(v.credit_valid_for_seconds)}",
        f"  accepting    {_yes(state.detail()['accepting_redemptions'] is True)}",
        f"  created      {isoformat_z(v.created_at)}",
        f"  updated      {isoformat_z(v.updated_at)}",
    ]
    print("\n".join(lines))
    return 0


def _lasts(seconds: int | None) -> str:
    from voucher_ledger.ledger.durations import format_duration

    return format_duration(seconds) if seconds else "forever"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


_PLAIN = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,200}$")


def _safe(value: Any) -> str:
    """A value for a terminal: plain tokens as they are, anything else JSON-quoted (so a
    description can never carry escape sequences or newlines into the output)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) or value is None:
        return json.dumps(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------- tail


def _type_width() -> int:
    from voucher_ledger.ledger.events import EVENT_TYPES

    return max(len(str(m.model_fields["type"].default)) for m in EVENT_TYPES) + 3  # " v2"


_TIME_WIDTH = len("2026-01-01T00:00:00.000000Z")
_AGGREGATE_WIDTH = 28  # "voucher:" and a 20-character code; a longer one pushes the rest right


def format_line(record: Any) -> str:
    """``seq  time  type  aggregate:id  key=value ...  by sub/role`` for one AuditRecord, the
    first four in columns that line up (times in UTC with microseconds, padded)."""
    env = record.envelope
    fields = env.event.model_dump(mode="json")
    fields.pop("type", None)
    fields.pop("version", None)
    for key in ("code", "customer_id"):
        if fields.get(key) == env.aggregate_id:
            fields.pop(key)
    keyed = " ".join(f"{k}={_safe(v)}" for k, v in fields.items())
    version = f" v{env.event.version}" if env.event.version != 1 else ""
    at = env.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kind = f"{env.event.type}{version}"
    aggregate = f"{env.aggregate}:{_safe(env.aggregate_id)}"
    return (
        f"{record.seq:>8}  {at:<{_TIME_WIDTH}}  {kind:<{_TYPE_WIDTH}}  "
        f"{aggregate:<{_AGGREGATE_WIDTH}}  {keyed}  "
        f"by {_safe(env.actor.sub)}/{_safe(env.actor.role)}"
    ).rstrip()


_TYPE_WIDTH = _type_width()


def format_json(record: Any) -> str:
    return json.dumps(
        {
            "seq": record.seq,
            "subject": record.subject,
            "envelope": record.envelope.model_dump(mode="json"),
        },
        separators=(",", ":"),
    )


async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from voucher_ledger.ledger.codes import normalise_code
    from voucher_ledger.ledger.errors import InvalidInput
    from voucher_ledger.published.subscriber import (
        DURABLE_PATTERN,
        AuditSubscriber,
        AuditSubscriberError,
        known_event_types,
        voucher_subject,
        wallet_subject,
    )

    prefix = settings.subject_prefix
    subjects = []
    for raw in args.code:
        try:
            subjects.append(voucher_subject(prefix, normalise_code(raw)))
        except InvalidInput as exc:
            raise UserError(f"--code: {exc.message}", 2) from exc
    for customer in args.customer:
        if not customer:
            raise UserError("--customer must not be empty", 2)
        subjects.append(wallet_subject(prefix, customer))
    unknown = sorted(set(args.types) - set(known_event_types()))
    if unknown:
        raise UserError(
            f"--type: unknown event type {', '.join(unknown)}; known: "
            f"{', '.join(known_event_types())}",
            2,
        )
    if args.durable is not None and not DURABLE_PATTERN.fullmatch(args.durable):
        raise UserError("--durable: 1 to 64 characters from A-Z, a-z, 0-9, _ and -", 2)
    from voucher_ledger.cli.replay import public_key

    spec = load_streams(settings)
    key = public_key(settings)  # every event is checked with it (a warning when there is none)
    out: TextIO = sys.stdout
    printed = 0
    async with connected(settings) as nc:
        subscriber = AuditSubscriber(
            nc,
            prefix,
            durable=args.durable,
            from_seq=args.from_seq,
            since=args.since,
            filter_subject=subjects or None,
            types=args.types or None,
            follow=not args.no_follow,
            stream=spec.event_stream,
            public_key=key,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, subscriber.stop)
        try:
            async with subscriber:
                async for record in subscriber:
                    line = format_json(record) if args.json else format_line(record)
                    try:
                        out.write(line + "\n")
                        out.flush()
                    except BrokenPipeError:  # `| head`: the reader has gone
                        _silence_stdout()
                        subscriber.stop()
                        break
                    printed += 1
                    if args.limit is not None and printed >= args.limit:
                        break
        except AuditSubscriberError as exc:
            raise UserError(str(exc)) from exc
        except _client_errors() as exc:
            raise UserError(f"NATS: {type(exc).__name__}: {exc}") from exc
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return 0


def _client_errors() -> tuple[type[BaseException], ...]:
    import nats.errors  # here: the CLI answers a refusal before it loads the NATS client

    return (nats.errors.Error, TimeoutError)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
