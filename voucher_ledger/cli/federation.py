"""``voucher-ledger federation check``: at the hub, the trail (the Sovereigns' events sourced
into ``<PREFIX>_SOVEREIGNS``) against each Sovereign's own event stream, subject by subject,
read across its JetStream domain (README "Hub and Sovereigns").

Exit 0: every Sovereign's events are all on the trail, no more, no fewer; 1: one differs or
cannot be reached (a cut leaf link: the trail catches up once it is back; ``--wait`` waits);
2: not a hub.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from voucher_ledger.cli.common import PROG, UserError, connected, load_streams, run_loop
from voucher_ledger.config.settings import Settings
from voucher_ledger.service import federation

COMMANDS = ("federation",)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    fed = sub.add_parser("federation", help="the hub's view of its Sovereigns")
    fed_sub = fed.add_subparsers(dest="action", required=True, metavar="{check}")
    check = fed_sub.add_parser(
        "check",
        help="compare the hub's trail with every Sovereign's events",
        description="At the hub: for each Sovereign in SOVEREIGNS, the events on the hub's "
        "trail against the Sovereign's own event stream, subject by subject. Exit 0 when all "
        "are equal, 1 when one differs or cannot be reached.",
    )
    check.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for the trail to catch up"
    )
    common(check)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.hub or not settings.sovereign_names:
        print(f"{PROG}: federation check runs at the hub (HUB=true, SOVEREIGNS)", file=sys.stderr)
        return 2
    if args.wait < 0 or args.wait > 3600:
        print(f"{PROG}: --wait must be between 0 and 3600 seconds", file=sys.stderr)
        return 2
    try:
        return run_loop(_check(settings, args.wait), settings)
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code


async def _check(settings: Settings, wait: float) -> int:
    spec = load_streams(settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with connected(settings) as nc:
        while True:
            checks = await federation.compare_trail(
                nc, settings.subject_prefix, settings.sovereign_names, spec.event_stream
            )
            if all(c.equal for c in checks) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.5)
    for check in checks:
        print(check.line())
    return 0 if all(c.equal for c in checks) else 1
