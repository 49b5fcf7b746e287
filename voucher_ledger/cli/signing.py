"""``voucher-ledger signing-key``: print the ledger's public signing key.

The key subscribers check every event with (README "Audit subscribers"): its key id, then the
PEM. The private key is never printed. On the embedded default the pair is generated under the
data dir if it does not exist yet (as the first ``serve`` would).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from voucher_ledger.cli.common import PROG
from voucher_ledger.config.settings import Settings
from voucher_ledger.signing.keys import SigningKeyError, describe, load_public_key

COMMANDS = ("signing-key",)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    key = sub.add_parser(
        "signing-key",
        help="print the public key every event's signature is checked with",
        description="Print the ledger's public Ed25519 key (its id, then the PEM): give it to "
        "audit subscribers, which check every event with it. SIGNING_PUBLIC_KEY_FILE, else the "
        "public half of SIGNING_KEY_FILE, else DATA_DIR's (generated on the first start).",
    )
    common(key)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        text = describe(load_public_key(settings))
    except SigningKeyError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
