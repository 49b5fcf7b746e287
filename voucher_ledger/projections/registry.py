"""Every read model the service runs (one projector applies them all, each with its own
checkpoint)."""

from __future__ import annotations

from voucher_ledger.projections.audit import AuditProjection
from voucher_ledger.projections.billing import BillingProjection
from voucher_ledger.projections.campaigns import CampaignProjection
from voucher_ledger.projections.global_vouchers import GlobalVoucherProjection
from voucher_ledger.projections.model import Projection
from voucher_ledger.projections.reports import ReportProjection
from voucher_ledger.projections.vouchers import VoucherProjection
from voucher_ledger.projections.wallets import WalletProjection

ALL_PROJECTIONS: tuple[Projection, ...] = (
    VoucherProjection(),
    WalletProjection(),
    BillingProjection(),
    CampaignProjection(),
    ReportProjection(),
    GlobalVoucherProjection(),
    AuditProjection(),
)
