"""``voucher-ledger``: serve, run processors, manage streams, read the event stream."""

from voucher_ledger.cli.main import main

__all__ = ["main"]
