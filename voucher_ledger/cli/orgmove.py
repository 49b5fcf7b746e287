"""``voucher-ledger org export TENANT --out FILE`` and ``voucher-ledger org import FILE --trust
KEY``: an Organization moves between Sovereigns as a signed bundle of its events
(``billing/orgmove.py``; README "Moving an Organization").

Exit 0: done (or nothing left to do); 2: refused, nothing written (no such account, a checkout
half-way, a bundle altered or signed by a key not trusted, an account with another history
here); 1: another failure (NATS unreachable, a key file unreadable).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voucher_ledger.cli.common import PROG, UserError, connected, load_streams, run_loop
from voucher_ledger.config.settings import Settings
from voucher_ledger.ledger.codes import validate_customer_id
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.money import BAISA

COMMANDS = ("org",)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    org = sub.add_parser(
        "org",
        help="move an Organization to another Sovereign (export, import)",
        description="Move an Organization's billing between Sovereigns as a signed bundle of "
        "its events: export it on the Sovereign it leaves, import it on the one it joins.",
    )
    org_sub = org.add_subparsers(dest="action", required=True, metavar="{export,import}")
    exp = org_sub.add_parser(
        "export",
        help="write the Organization's signed bundle and record that it moved",
        description="Write TENANT's whole billing history (its account's events and its "
        "voucher redemptions) to FILE, signed with this Sovereign's ledger key, and record the "
        "move (wallet.account_moved): from then on this Sovereign refuses checkouts for it. "
        "Exporting a moved Organization again writes the same bundle.",
    )
    exp.add_argument("tenant", metavar="TENANT", help="the Organization (the tenant_id)")
    exp.add_argument("--out", required=True, type=Path, metavar="FILE", help="the bundle file")
    exp.add_argument(
        "--to", dest="destination", default=None, metavar="SOVEREIGN", help="where it goes"
    )
    exp.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a moment without a checkout half-way (30)",
    )
    common(exp)
    imp = org_sub.add_parser(
        "import",
        help="replay an Organization's bundle into this Sovereign's ledger",
        description="Check FILE's signature against the trusted keys, then append the "
        "Organization's events with their original ids and times. Importing the same bundle "
        "again changes nothing; an Organization with another history here is refused.",
    )
    imp.add_argument("bundle", type=Path, metavar="FILE", help="the bundle file")
    imp.add_argument(
        "--trust",
        action="append",
        required=True,
        type=Path,
        metavar="KEYFILE",
        help="a PEM file of the exporting Sovereign's public key(s), as its `voucher-ledger "
        "signing-key` prints them (repeatable)",
    )
    imp.add_argument("--dry-run", action="store_true", help="check the bundle; write nothing")
    common(imp)


def _signer(settings: Settings) -> Any:
    """The processors' key: the move and the imported events are written as they write
    theirs, and the bundle is signed with it (never a new key: one the other Sovereign was
    not given would make every bundle foreign)."""
    from voucher_ledger.signing.keys import PRIVATE_FILE, SigningKeyError, load_signer

    if settings.signing_key_file is None and not (settings.data_dir / PRIVATE_FILE).exists():
        raise UserError(
            "org signs with the processors' key: set SIGNING_KEY_FILE to it, or --data-dir to "
            "the data dir of the serve that runs them"
        )
    try:
        return load_signer(settings)
    except SigningKeyError as exc:
        raise UserError(str(exc)) from exc


def _omr(baisa: int) -> str:
    return f"{baisa / BAISA:.3f} OMR"


def _write_atomically(
    path: Path,
) -> tuple[Callable[[bytes], None], Callable[[], None], Callable[[], None]]:
    """A writer into a temporary file next to ``path``, the step that puts it in place, and
    the one that drops it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def write(data: bytes) -> None:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())

    def done() -> None:
        os.replace(tmp, path)

    def discard() -> None:
        tmp.unlink(missing_ok=True)

    return write, done, discard


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    try:
        tenant = validate_customer_id(args.tenant)
    except InvalidInput as exc:
        raise UserError(f"TENANT: {exc.message}", code=2) from exc
    if not 0 <= args.wait <= 3600:
        raise UserError("--wait must be between 0 and 3600 seconds", code=2)
    if not args.out.parent.is_dir():
        raise UserError(f"--out: no directory {args.out.parent}", code=2)
    signer = _signer(settings)
    write, done, discard = _write_atomically(args.out)
    try:
        out = await _export_on(settings, tenant, args.destination, args.wait, signer, write)
    except BaseException:
        discard()
        raise
    done()
    state = out.state
    print(
        f"wrote {args.out}: {out.wallet_events} account events, {out.redemption_events} "
        f"redemption events; digest {out.digest}; signed by key {signer.key_id}"
    )
    print(
        f"balance {_omr(state.balance_baisa)} ({_omr(state.reserved_baisa)} reserved), "
        f"{len(state.orders)} orders"
    )
    if out.reads > 1:
        print(f"read the account {out.reads} times (checkouts were under way)")
    where = f"to {out.destination}" if out.destination else "to another Sovereign"
    if out.again:
        print(f"{tenant} had moved {where} in this bundle already: written again, nothing recorded")
    else:
        print(f"recorded: {tenant} moved {where}; checkouts for it are refused here from now on")
    return 0


async def _export_on(
    settings: Settings,
    tenant: str,
    destination: str | None,
    wait: float,
    signer: Any,
    write: Callable[[bytes], None],
) -> Any:
    from voucher_ledger.billing import orgmove
    from voucher_ledger.commands.eventstore import JetStreamEventStore
    from voucher_ledger.signing.cutover import CutoverError, ensure_cutover

    spec = load_streams(settings)
    async with connected(settings) as nc:
        store = JetStreamEventStore(nc, spec.event_stream, timeout=30)
        try:
            if settings.ledger_signing:
                try:
                    await ensure_cutover(nc, spec.event_stream, signer)
                except CutoverError as exc:
                    raise UserError(str(exc)) from exc
            try:
                return await orgmove.export(
                    store,
                    spec.layout,
                    tenant,
                    signer,
                    write,
                    source=settings.sovereign_fqdn or None,
                    stream=spec.event_stream,
                    destination=destination,
                    seal=settings.ledger_signing,
                    wait=wait,
                )
            except orgmove.MoveError as exc:
                raise UserError(str(exc), code=2) from exc
        finally:
            await store.close()


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    from voucher_ledger.billing import orgmove
    from voucher_ledger.commands.eventstore import JetStreamEventStore
    from voucher_ledger.signing.cutover import CutoverError, ensure_cutover
    from voucher_ledger.signing.keys import SigningKeyError

    trusted = []
    for path in args.trust:
        try:
            trusted.extend(orgmove.trusted_keys(path.read_bytes()))
        except OSError as exc:
            raise UserError(f"--trust {path}: {exc.strerror}") from exc
        except SigningKeyError as exc:
            raise UserError(f"--trust {path}: {exc}") from exc
    try:
        data = args.bundle.read_bytes()
    except OSError as exc:
        raise UserError(f"{args.bundle}: {exc.strerror}", code=2) from exc
    try:
        bundle = orgmove.read_bundle(data, trusted)
    except orgmove.BundleRefused as exc:
        raise UserError(f"{args.bundle} refused: {exc}; nothing written", code=2) from exc
    header = bundle.header
    print(
        f"bundle of {bundle.tenant} from {header.get('source') or 'a Sovereign'} (stream "
        f"{header.get('stream')}), signed by key {bundle.key}: {len(bundle.wallet)} account "
        f"events, {len(bundle.redemptions)} redemption events; digest {bundle.digest}"
    )
    signer = _signer(settings) if settings.ledger_signing else None
    spec = load_streams(settings)
    async with connected(settings) as nc:
        store = JetStreamEventStore(nc, spec.event_stream, timeout=30)
        try:
            if signer is not None and not args.dry_run:
                try:
                    await ensure_cutover(nc, spec.event_stream, signer)
                except CutoverError as exc:
                    raise UserError(str(exc)) from exc
            try:
                out = await orgmove.import_bundle(
                    store, spec.layout, bundle, signer, dry_run=args.dry_run
                )
            except orgmove.MoveError as exc:
                raise UserError(f"{args.bundle} refused: {exc}", code=2) from exc
        finally:
            await store.close()
    state = out.state
    if args.dry_run:
        print(f"dry run: {len(bundle.wallet) - out.already} events to write; nothing written")
    elif out.written == 0:
        print(f"{bundle.tenant} holds this bundle's history already: nothing written")
    else:
        print(f"wrote {out.written} events ({out.already} imported before)")
    print(
        f"balance {_omr(state.balance_baisa)} ({_omr(state.reserved_baisa)} reserved), "
        f"{len(state.orders)} orders, {len(state.lots)} expiring grants; the "
        f"{len(bundle.redemptions)} redemption events stay with the exporting Sovereign's "
        "vouchers (carried in the bundle for the trail)"
    )
    if out.differences:
        for diff in out.differences:
            print(f"DIFF {diff}")
        print(f"{PROG}: {len(out.differences)} difference(s)", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    job = _export if args.action == "export" else _import
    try:
        return run_loop(job(args, settings), settings)
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print(f"{PROG}: interrupted; run the same command again to finish", file=sys.stderr)
        return 130
