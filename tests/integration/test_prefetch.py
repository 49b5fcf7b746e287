"""A batch's reads in one round trip (``projections/prefetch.py``) on a real PostgreSQL: a read
announced with the keys asked for is answered from the combined query with exactly the rows
and values the connection itself returns (text, numbers, booleans, jsonb, timestamps, NULLs);
anything else goes to the connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.model import TABLES
from voucher_ledger.projections.prefetch import DEFER_ROWS, Batched, Prefetching, Row, _row_type
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.wallets import ORDERS, WALLETS

AT = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)


async def _filled(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    await conn.executemany(
        "INSERT INTO wallets (customer_id, balance_baisa, reserved_baisa, updated_at, last_seq) "
        "VALUES ($1, $2, $3, $4, $5)",
        [("org-a", 5000, 250, AT, 7), ("org-b", 0, 0, AT, 9), ("org-c", 1, 0, AT, 11)],
    )
    await conn.execute(
        "INSERT INTO orders (order_id, customer_id, tenant_id, plan_id, apps, addons, lines, "
        "promo_code, total_baisa, amount_due_baisa, status, created_at, updated_at, last_seq, "
        "paid_by_credit, user_id) "
        "VALUES ('o-1', 'org-a', 'org-a', 'pro', '[\"crm\"]', '[]', "
        '\'[{"name": "Pro \\u00e9", "amount_baisa": 5000}]\', NULL, 5000, 0, \'completed\', '
        "$1, $1, 8, true, 'alice')",
        AT,
    )


@pytest.fixture
async def filled(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a migrated database holding three wallets and one order."""
    conn = await asyncpg.connect(database)
    try:
        await _filled(conn)
        yield conn
    finally:
        await conn.close()


async def test_announced_reads_come_from_one_query_with_the_connection_s_values(
    filled: asyncpg.Connection,
) -> None:
    conn = filled
    prefetched = Batched(conn)
    await prefetched.load(
        [
            (WALLETS.select, {"org-a", "org-b"}),
            (WALLETS.select, {"org-x"}),  # the same read announced twice: merged
            (ORDERS.select, {"o-1", "o-missing"}),
            (ORDERS.select, set()),
        ]
    )
    for sql, keys in (
        (WALLETS.select, ["org-a"]),
        (WALLETS.select, ["org-b", "org-x"]),
        (ORDERS.select, ["o-1"]),
        (ORDERS.select, ["o-missing"]),
    ):
        got = await prefetched.fetch(sql, keys)
        direct = await conn.fetch(sql, keys)
        assert [list(r) for r in got] == [list(r) for r in direct], sql
        assert all(isinstance(r, Row) for r in got)
    assert prefetched.served == 4
    (order,) = await prefetched.fetch(ORDERS.select, ["o-1"])
    assert order["apps"] == '["crm"]'
    assert order["paid_by_credit"] is True
    assert order["created_at"] == AT
    assert order["promo_code"] is None
    assert order["lines"] == '[{"name": "Pro é", "amount_baisa": 5000}]'
    assert order[0] == "o-1"
    assert order["total_baisa"] == 5000


async def test_reads_not_announced_or_with_other_keys_go_to_the_connection(
    filled: asyncpg.Connection,
) -> None:
    conn = filled
    prefetched = Batched(conn)
    odd = "SELECT customer_id FROM wallets WHERE last_seq > 0 OR $1::text[] IS NULL"
    await prefetched.load([(WALLETS.select, {"org-a"}), (odd, {"x"})])
    # a key beyond the announcement: the connection answers, with the row it has
    got = await prefetched.fetch(WALLETS.select, ["org-a", "org-c"])
    assert sorted(r["customer_id"] for r in got) == ["org-a", "org-c"]
    assert [r["order_id"] for r in await prefetched.fetch(ORDERS.select, ["o-1"])] == ["o-1"]
    # a statement not of a read's form is never combined (its keys are not its rows')
    assert len(await prefetched.fetch(odd, ["x"])) == 3
    assert prefetched.served == 0
    # everything else is the connection's
    assert await prefetched.fetchval("SELECT count(*) FROM wallets") == 3


def test_every_read_a_read_model_announces_can_be_combined() -> None:
    """A read model's announced reads are all of the combinable form (else each would quietly
    cost its own round trip again)."""
    announcing = [p for p in ALL_PROJECTIONS if isinstance(p, Prefetching)]
    assert {p.name for p in announcing} >= {"vouchers", "wallets", "billing", "reports"}
    for projection in announcing:
        for sql, _ in projection.wants([]):
            assert _row_type(sql) is not None, (projection.name, sql)


async def test_kept_writes_go_as_one_statement_and_leave_what_one_by_one_would(
    filled: asyncpg.Connection,
) -> None:
    """COPYs and parameter-only UPDATEs of different tables share one statement; a second
    write to a table sends the kept ones first (its order kept), and a write that reads a
    table is never kept (it must see the writes before it)."""
    conn = filled
    async with conn.transaction():
        batched = Batched(conn)
        wallet = ("org-new", 10, 0, AT, 20)
        await batched.copy_records_to_table(WALLETS.name, columns=WALLETS.names, records=[wallet])
        row = await conn.fetchrow(ORDERS.select, ["o-1"])
        assert row is not None
        changed = [list(row)]
        changed[0][ORDERS.index["status"]] = "refund_due"
        await batched.execute(ORDERS.update, *ORDERS.update_args(changed))
        assert batched.statements == 0  # kept
        assert await conn.fetchval("SELECT count(*) FROM wallets") == 3
        # a second write to wallets: the kept ones go first, then this one is kept
        moved = [list(wallet)]
        moved[0][WALLETS.index["balance_baisa"]] = 7
        await batched.execute(WALLETS.update, *WALLETS.update_args(moved))
        assert batched.statements == 1
        # a write that reads a table sees every write before it
        await batched.execute(
            "UPDATE wallets SET last_seq = (SELECT count(*) FROM orders "
            "WHERE status = 'refund_due') WHERE customer_id = $1",
            "org-a",
        )
        assert batched.statements == 3
        await batched.flush()
        assert batched.statements == 3  # nothing was left
        balances = dict(await conn.fetch("SELECT customer_id, balance_baisa FROM wallets"))
        assert balances["org-new"] == 7
        assert await conn.fetchval("SELECT last_seq FROM wallets WHERE customer_id = 'org-a'") == 1
        # more rows than DEFER_ROWS go as a COPY of their own
        many = [(f"org-{i}", 0, 0, AT, i) for i in range(DEFER_ROWS + 1)]
        await batched.copy_records_to_table(WALLETS.name, columns=WALLETS.names, records=many)
        assert batched.statements == 4
        assert await conn.fetchval("SELECT count(*) FROM wallets") == 4 + DEFER_ROWS + 1


_SAME = {
    "int4": "integer",
    "int8": "bigint",
    "bool": "boolean",
    "timestamptz": "timestamp with time zone",
}


async def test_every_declared_column_has_its_table_s_type(database: str) -> None:
    """A kept COPY inserts arrays cast to the declared types: each must be the column's own
    (else a value could be cast on the way, or refused)."""
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn)
        for table in TABLES.values():
            actual = {
                r["attname"]: r["type"]
                for r in await conn.fetch(
                    "SELECT attname, format_type(atttypid, atttypmod) AS type "
                    "FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
                    "AND NOT attisdropped",
                    table.name,
                )
            }
            for column in table.columns:
                declared = _SAME.get(column.type, column.type)
                assert actual[column.name] == declared, (table.name, column.name)
    finally:
        await conn.close()
