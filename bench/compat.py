"""Names in voucher_ledger that moved while this benchmark was written."""

from __future__ import annotations

try:  # the list of projections moved into a registry module (issue #4's wallets)
    from voucher_ledger.projections.registry import ALL_PROJECTIONS
except ImportError:  # pragma: no cover - the layout before it
    from voucher_ledger.projections.projector import (  # type: ignore[attr-defined,no-redef]
        ALL_PROJECTIONS,
    )

__all__ = ["ALL_PROJECTIONS"]
