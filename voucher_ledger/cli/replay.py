"""``voucher-ledger rebuild`` and ``voucher-ledger verify``: replay jobs over the event stream.

Both use NATS_URL (or the embedded server a running ``serve`` wrote down) and DATABASE_URL (or
the embedded PostgreSQL under the data directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from tqdm import tqdm

from voucher_ledger.cli.common import (
    PROG,
    UserError,
    connect,
    load_streams,
    nats_url,
    run_loop,
    tune_gc,
)
from voucher_ledger.config.settings import Settings, redact_url
from voucher_ledger.projections import sovereign_trail
from voucher_ledger.projections.rebuild import Progress, RebuildSummary, rebuild
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.verify import verify
from voucher_ledger.signing.keys import SigningKeyError, load_public_key
from voucher_ledger.signing.proof import IntegrityError

COMMANDS = ("rebuild", "verify")


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    names = [p.name for p in ALL_PROJECTIONS] + [sovereign_trail.NAME]
    rb = sub.add_parser(
        "rebuild",
        help="replay the event stream into fresh tables and swap them in (reads keep working)",
    )
    rb.add_argument(
        "--projection", choices=names, action="append", help="only this one (repeatable)"
    )
    rb.add_argument("--no-progress", action="store_true", help="no progress bar")
    common(rb)
    vf = sub.add_parser(
        "verify", help="fold the stream and compare with the read models; exit 1 on drift"
    )
    common(vf)


# A rebuild runs with the cyclic GC off and collects itself every this many events: the
# replay's objects (a batch's events, rows and records) are short-lived and acyclic, so the
# collector's passes over them found nothing and cost ~6 % of the process (bench/README.md).
_COLLECT_EVERY = 250_000


class _Bar(Progress):
    def __init__(self, label: str, enabled: bool) -> None:
        self._label = label
        self._enabled = enabled
        self._bar: tqdm[Any] | None = None
        self._uncollected = 0  # events since the last collection

    def start(self, total: int, done: int) -> None:
        self._bar = tqdm(
            total=total,
            initial=done,
            unit=" events",
            unit_scale=False,
            desc=f"rebuild {self._label}",
            disable=not self._enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def advance(self, events: int, total: int) -> None:
        self._uncollected += events
        if self._uncollected >= _COLLECT_EVERY:
            self._uncollected = 0
            gc.collect()
        if self._bar is not None:
            if total > (self._bar.total or 0):
                self._bar.total = total
            self._bar.update(events)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.asynccontextmanager
async def _servers(settings: Settings) -> AsyncIterator[tuple[Client, asyncpg.Pool]]:
    nc = await connect(nats_url(settings), settings)
    try:
        url = settings.database_url
        if not url:  # service.owner.attach gave the running owner's when unset
            raise UserError(
                f"DATABASE_URL is not set and no voucher-ledger runs on {settings.data_dir}"
            )
        try:
            # rebuild: one connection for the swap, one per read model for the replay
            pool = await asyncpg.create_pool(url, min_size=1, max_size=len(ALL_PROJECTIONS) + 1)
        except Exception as exc:  # any connection failure is the same story for the user
            raise UserError(f"cannot connect to PostgreSQL at {redact_url(url)}: {exc}") from exc
        try:
            yield nc, pool
        finally:
            await pool.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


def _summary(s: RebuildSummary) -> str:
    rows = ", ".join(f"{table} {count}" for table, count in s.rows.items())
    resumed = f" (resumed at seq {s.resumed_from})" if s.resumed_from else ""
    return (
        f"rebuilt {s.projection}: {s.events} events to seq {s.reached}{resumed} in "
        f"{s.seconds:.1f}s, {s.events_per_second:,.0f} events/s; rows: {rows}"
    )


async def _rebuild(args: argparse.Namespace, settings: Settings) -> int:

    # A replay allocates a batch's events, rows and records at a time, all short-lived: with
    # the default thresholds the cyclic GC walked them (and every module) over and over.
    tune_gc()
    spec = load_streams(settings)
    chosen = [p for p in ALL_PROJECTIONS if not args.projection or p.name in args.projection]
    trail = is_trail_hub(settings) and (
        not args.projection or sovereign_trail.NAME in args.projection
    )
    if args.projection and sovereign_trail.NAME in args.projection and not trail:
        raise UserError(f"{sovereign_trail.NAME} is a hub's (HUB=true with SOVEREIGNS)")
    async with _servers(settings) as (nc, pool):
        if trail:
            done = await sovereign_trail.rebuild_trail(pool, nc, settings.subject_prefix)
            print(
                f"rebuilt {sovereign_trail.NAME}: the trail to seq {done.reached}; "
                f"rows: sovereign_redemptions {done.rows}"
            )
        if not chosen:
            return 0
        label = "+".join(p.name for p in chosen)
        bar = _Bar(label, not args.no_progress and sys.stderr.isatty())
        gc.disable()  # the bar collects every _COLLECT_EVERY events
        try:
            summary = await rebuild(
                pool, nc, spec, chosen, progress=bar, public_key=public_key(settings)
            )
        except IntegrityError as exc:
            print(f"{PROG}: rebuild refused: {exc}", file=sys.stderr)
            return 1
        finally:
            gc.enable()
        print(_summary(summary))
    return 0


async def _verify(settings: Settings) -> int:
    spec = load_streams(settings)
    async with _servers(settings) as (nc, pool):
        report = await verify(
            pool,
            nc,
            spec,
            public_key=public_key(settings),
            trail_prefix=settings.subject_prefix if is_trail_hub(settings) else None,
        )
    checked = ", ".join(f"{n} {t}" for t, n in report.checked.items())
    print(f"stream head: sequence {report.head}")
    print(f"projections: {lag_words(report.head, report.checkpoints)}")
    if report.trail is not None:
        head, applied = report.trail
        behind = f"{head - applied} event(s) behind" if head > applied else "up to date"
        print(f"sovereign trail: head {head}, read model at {applied} ({behind})")
    print(f"checked: {checked}")
    if report.signatures is None:
        print("signatures: NOT checked (no public key)")
    else:
        key, cutover, passed = report.signatures
        print(
            f"signatures: {passed:,} event(s) checked with key {key}, every event signed from "
            f"sequence {cutover}"
        )
    for line in report.differences:
        print(f"DIFF {line}")
    if report.clean:
        print("verify: the read models match the event stream")
        return 0
    print(f"verify: {len(report.differences)} difference(s)", file=sys.stderr)
    return 1


def is_trail_hub(settings: Settings) -> bool:
    """Whether this serve is a hub whose trail has Sovereigns (its trail read model runs)."""
    return bool(settings.hub and settings.sovereign_names)


def public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The key events are checked with (never a new one: a tool must not invent it). None, with
    a warning, when none is configured and the data dir has none (the events are then not
    checked); a configured key that cannot be read is an error. None, silently, with
    LEDGER_SIGNING off and no key configured."""
    configured = settings.signing_public_key_file or settings.signing_key_file
    if not settings.ledger_signing and configured is None:
        return None
    try:
        return load_public_key(settings, create=False)
    except SigningKeyError as exc:
        if configured is not None:
            raise UserError(str(exc)) from None
        print(
            f"{PROG}: WARNING: event signatures NOT checked: {exc}; set SIGNING_PUBLIC_KEY_FILE "
            "(or pass the --data-dir serve runs with)",
            file=sys.stderr,
        )
        return None


def lag_words(head: int, checkpoints: dict[str, int]) -> str:
    """How far each read model is behind the stream head, in words."""
    behind = {name: head - seq for name, seq in sorted(checkpoints.items()) if head > seq}
    if not behind:
        return "every read model has applied the whole stream"
    parts = [f"{name} {n} event{'s' if n != 1 else ''} behind" for name, n in behind.items()]
    level = [name for name in sorted(checkpoints) if name not in behind]
    if level:
        parts.append(f"{', '.join(level)} up to date")
    return "; ".join(parts)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from voucher_ledger.jetstream import fastpaths  # here: see cli/main.py's serve

    fastpaths.configure(settings.fast_paths)
    try:
        if args.command == "rebuild":
            return run_loop(_rebuild(args, settings), settings)
        return run_loop(_verify(settings), settings)
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
