"""The read models' column declarations (``projections/vouchers.py``, ``wallets.py``,
``audit.py``) against the tables the migrations make: every column of every table, with the
type its UPDATE casts to. A migration that adds a column without its declaration (which COPY
would silently fill with the default) fails here, as does a declaration without a migration."""

from __future__ import annotations

import asyncpg
import pytest

from voucher_ledger.projections.audit import AUDIT_LOG
from voucher_ledger.projections.billing import INVOICES, SUBSCRIPTION_ORDERS, SUBSCRIPTIONS
from voucher_ledger.projections.campaigns import CAMPAIGN_CODES, CAMPAIGN_REDEMPTIONS, CAMPAIGNS
from voucher_ledger.projections.global_vouchers import GLOBAL_SHARES, GLOBAL_VOUCHERS
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.model import Column, Table
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.reports import (
    REPORT_FACTS,
    REPORT_GRANTS,
    REPORT_HOLDS,
    REPORT_ORDERS,
)
from voucher_ledger.projections.vouchers import REDEMPTIONS, VOUCHERS
from voucher_ledger.projections.wallets import CREDIT_ENTRIES, CREDIT_LOTS, ORDERS, WALLETS

DECLARED = (
    VOUCHERS,
    REDEMPTIONS,
    WALLETS,
    CREDIT_ENTRIES,
    ORDERS,
    CREDIT_LOTS,
    SUBSCRIPTION_ORDERS,
    SUBSCRIPTIONS,
    INVOICES,
    CAMPAIGNS,
    CAMPAIGN_CODES,
    CAMPAIGN_REDEMPTIONS,
    REPORT_FACTS,
    REPORT_GRANTS,
    REPORT_HOLDS,
    REPORT_ORDERS,
    GLOBAL_VOUCHERS,
    GLOBAL_SHARES,
    AUDIT_LOG,
)

COLUMNS = """
SELECT column_name, format_type(a.atttypid, a.atttypmod) AS type
FROM information_schema.columns c
JOIN pg_attribute a ON a.attrelid = format('%I.%I', c.table_schema, c.table_name)::regclass
                   AND a.attname = c.column_name
WHERE c.table_schema = 'public' AND c.table_name = $1
ORDER BY c.ordinal_position
"""
# the declarations' short names for PostgreSQL's type names
SHORT = {"timestamp with time zone": "timestamptz"}


async def test_every_table_of_every_read_model_is_declared_as_migrated(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn)
        assert {t.name for t in DECLARED} == {t for p in ALL_PROJECTIONS for t in p.tables}
        for table in DECLARED:
            rows = await conn.fetch(COLUMNS, table.name)
            migrated = {r["column_name"]: SHORT.get(r["type"], r["type"]) for r in rows}
            declared = {c.name: c.type for c in table.columns}
            assert declared == migrated, table.name
    finally:
        await conn.close()


def test_a_new_row_takes_every_column_by_name_and_no_other() -> None:
    table = Table("t", Column("k", "text"), Column("n", "bigint", updated=True))
    assert table.new_row(n=1, k="a") == ["a", 1]
    with pytest.raises(KeyError):
        table.new_row(k="a")
    with pytest.raises(KeyError):
        table.new_row(k="a", n=1, extra=2)
    with pytest.raises(KeyError):
        table.new_row(k="a", m=1)
    assert table.update_args([["a", 1], ["b", 2]]) == [["a", "b"], [1, 2]]
