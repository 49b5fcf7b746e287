"""``voucher-ledger nats creds subscriber --out FILE``: the embedded nats-server's read-only
subscriber identity (``jetstream/auth.py``), written for an operator to hand to an auditor.

The file (0600) holds ``NATS_URL`` (while the service runs: the embedded port changes at each
start), ``NATS_USER`` and ``NATS_PASSWORD``, as the settings read them; for example
``env $(grep -v '^#' FILE | xargs) voucher-ledger audit tail``. Nothing secret is printed. For
an external NATS the operator mints the subscriber with the NATS tooling (README
"Configuration").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from voucher_ledger.cli.common import PROG
from voucher_ledger.config.settings import Settings
from voucher_ledger.jetstream.auth import read_user, write_env_file
from voucher_ledger.service.owner import is_owned, read_owner

COMMANDS = ("nats",)
HANDED_OUT = ("subscriber",)  # the only identity meant to leave the host


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    nats = sub.add_parser("nats", help="the embedded nats-server's identities")
    nats_sub = nats.add_subparsers(dest="action", required=True, metavar="{creds}")
    creds = nats_sub.add_parser(
        "creds",
        help="write an identity's credentials to a file (0600)",
        description="Write the read-only subscriber identity of the embedded nats-server (it "
        "may read the event stream through consumers of its own and publish nothing to the "
        "ledger) to FILE, mode 0600, as NATS_URL, NATS_USER and NATS_PASSWORD lines. The "
        "service must have started once on the data dir.",
    )
    creds.add_argument("role", choices=HANDED_OUT, help="the identity (subscriber)")
    creds.add_argument("--out", type=Path, required=True, help="the file to write")
    common(creds)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.embedded_nats:
        print(
            f"{PROG}: NATS_URL is set: mint a subscriber with your NATS operator's tooling "
            "(README, Configuration, NATS permissions)",
            file=sys.stderr,
        )
        return 1
    data_dir = settings.data_dir
    user = read_user(data_dir.resolve() / "nats", args.role)
    if user is None:
        print(
            f"{PROG}: no NATS identities under {data_dir}: start `{PROG} serve` on it once",
            file=sys.stderr,
        )
        return 1
    values = {}
    owner = read_owner(data_dir) if is_owned(data_dir) else None
    if owner is not None and owner.nats_url:
        values["NATS_URL"] = owner.nats_url
    values.update(user.env())
    try:
        write_env_file(
            args.out,
            values,
            f"voucher-ledger: read-only {args.role} credentials of the nats-server of {data_dir}",
        )
    except OSError as exc:
        print(f"{PROG}: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    where = values.get("NATS_URL", "the embedded nats-server (not running now)")
    print(f"wrote the {args.role} credentials for {where} to {args.out} (mode 0600)")
    return 0
