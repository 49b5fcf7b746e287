"""``voucher-ledger import-seed --from postgres://...``: carry a seed billing database over as
events (``billing/seed_import.py``), then reconcile it against the ledger.

Exit 0: reconciled exactly (a rerun writes nothing and reconciles again); 1: a difference
between the source and the ledger; 2: something cannot be carried (listed, nothing written) or
the source cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from voucher_ledger.cli.common import PROG, UserError, connected, load_streams, run_loop
from voucher_ledger.config.settings import Settings, redact_url

COMMANDS = ("import-seed",)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    imp = sub.add_parser(
        "import-seed",
        help="import the seed billing service's database as events, then reconcile",
    )
    imp.add_argument(
        "--from", dest="source", required=True, metavar="URL", help="the seed's PostgreSQL URL"
    )
    imp.add_argument(
        "--dry-run", action="store_true", help="plan and list what cannot be carried; write nothing"
    )
    common(imp)


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    from voucher_ledger.billing import seed_import as si
    from voucher_ledger.commands.eventstore import JetStreamEventStore
    from voucher_ledger.signing.cutover import CutoverError, ensure_cutover

    signer = _signer(settings)
    print(f"reading {redact_url(args.source)}")
    try:
        src = await si.read_source(args.source)
    except si.SourceError as exc:
        raise UserError(str(exc), code=2) from exc
    counts = ", ".join(f"{t} {len(src[t])}" for t in si.TABLES)
    print(f"source: {counts}")
    plan = si.plan_import(src, max_credit_baisa=settings.max_credit_baisa)
    for note in plan.notes:
        print(f"note: {note}")
    spec = load_streams(settings)
    async with connected(settings) as nc:
        store = JetStreamEventStore(nc, spec.event_stream, timeout=30)
        try:
            found, conflicts = await si.existing(store, spec.layout, plan)
            problems = plan.problems + conflicts
            if problems:
                for problem in problems:
                    print(f"cannot carry: {problem}", file=sys.stderr)
                print(
                    f"{PROG}: {len(problems)} item(s) cannot be carried; nothing was written",
                    file=sys.stderr,
                )
                return 2
            if args.dry_run:
                print(f"dry run: {plan.events} events for {len(found)} aggregates; nothing written")
                return 0
            if signer is not None:
                try:
                    await ensure_cutover(nc, spec.event_stream, signer)
                except CutoverError as exc:
                    raise UserError(str(exc)) from exc
            written = await si.write(store, spec.layout, plan, found, signer)
            print(
                f"wrote {written.events} events for {written.aggregates} aggregates "
                f"({written.already} imported before)"
            )
            report = await si.reconcile(store, spec.layout, src, plan)
        finally:
            await store.close()
    print("reconciliation (source against ledger):")
    for line in report.lines:
        print(f"  {line}")
    if report.differences:
        for diff in report.differences:
            print(f"DIFF {diff}")
        print(f"{PROG}: {len(report.differences)} difference(s)", file=sys.stderr)
        return 1
    print("reconciled: no difference")
    return 0


def _signer(settings: Settings) -> Any:
    """The processors' signing key (the import writes events as they do), never a new one: a
    key of its own would make every imported event fail the readers' check. None with
    LEDGER_SIGNING off."""
    if not settings.ledger_signing:
        return None
    from voucher_ledger.signing.keys import PRIVATE_FILE, SigningKeyError, load_signer

    if settings.signing_key_file is None and not (settings.data_dir / PRIVATE_FILE).exists():
        raise UserError(
            "events are signed (LEDGER_SIGNING) and import-seed signs with the processors' key: "
            "set SIGNING_KEY_FILE to it, or --data-dir to the data dir of the serve that runs "
            "them (or LEDGER_SIGNING=false where nothing is signed)"
        )
    try:
        return load_signer(settings)
    except SigningKeyError as exc:
        raise UserError(str(exc)) from exc


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return run_loop(_import(args, settings), settings)
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to finish", file=sys.stderr)
        return 130
