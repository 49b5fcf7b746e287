"""Every projection the service runs (one projector, one lease and one checkpoint each)."""

from __future__ import annotations

from voucher_ledger.projections.projector import AuditProjection, Projection, VoucherProjection
from voucher_ledger.projections.wallets import WalletProjection

ALL_PROJECTIONS: tuple[Projection, ...] = (
    VoucherProjection(),
    WalletProjection(),
    AuditProjection(),
)
