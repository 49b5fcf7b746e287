"""A batch's reads in one round trip, and its writes in another (issue #19).

Each read model's applier reads the rows its batch touches that already exist, one ``SELECT``
per table, then writes each table with a ``COPY`` or an ``UPDATE``: twenty statements for a
checkout's ``order.placed``, each a round trip. In the live projector the appliers get a
:class:`Batched` connection instead:

**Reads.** A read model may say beforehand which reads it will make (``wants``: the statement
and the keys); they go to PostgreSQL as ONE query, each read an array of row values::

    SELECT ARRAY(SELECT ROW(q.*) FROM (<read 1, its $1 as $1>) AS q),
           ARRAY(SELECT ROW(q.*) FROM (<read 2, its $1 as $2>) AS q), ...

and ``fetch`` answers a read from those rows when it was announced with at least the keys asked
for, and goes to PostgreSQL otherwise. So an announcement is only ever a guess: a read announced
with too few keys, or not at all, is made as before, and extra keys only bring rows nobody asks
for. A read is a constant ``SELECT <columns> FROM <table> WHERE <first column> =
ANY($1::<type>[])`` (``Table.select`` and the like): rows are matched to keys on their first
column, and answered as :class:`Row`, which reads like an ``asyncpg.Record``.

**Writes.** A ``COPY`` of a declared table (``model.TABLES``; at most ``DEFER_ROWS`` rows) and
a write that reads nothing but its parameters (``model.PARAMETERS_ONLY``: each table's
``UPDATE … FROM unnest``) are not sent at once but kept, and the kept ones go as ONE
statement, each a data-modifying ``WITH`` part (the ``COPY`` as ``INSERT … SELECT * FROM
unnest($n::<type>[], …)``), before anything else is sent (a read not prefetched, any other
statement) and before the commit (:meth:`Batched.flush`). The parts of one statement share one
snapshot and run in no set order, so two writes to one table never share a statement: a second
write to a table sends the kept ones first. What PostgreSQL holds at the commit is therefore
what the statements one by one would have left.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from voucher_ledger.projections.model import PARAMETERS_ONLY, TABLES, Conn, PlainEvent, Table

Want = tuple[str, Collection[Any]]  # a read's statement and the keys it will be asked for


@runtime_checkable
class Prefetching(Protocol):
    """A read model that announces its reads (``Projection`` with ``wants``)."""

    def wants(self, events: Sequence[PlainEvent]) -> list[Want]: ...


_READ = re.compile(
    r"^SELECT ([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*) FROM [a-z_]+ "
    r"WHERE ([a-z_][a-z0-9_]*) = ANY\(\$1::[a-z ]+\[\]\)$"
)


class Row(tuple[Any, ...]):
    """A row of a prefetched read: by position, or by column name like ``asyncpg.Record``."""

    __slots__ = ()
    columns: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.columns[key])
        return tuple.__getitem__(self, key)


_ROW_TYPES: dict[str, type[Row]] = {}


def _row_type(sql: str) -> type[Row] | None:
    """The :class:`Row` class of a read's columns; None for a statement not of the form."""
    found = _ROW_TYPES.get(sql)
    if found is None:
        match = _READ.match(sql)
        if match is None:
            return None
        names = match.group(1).split(", ")
        if names[0] != match.group(2):  # rows are matched to keys on their first column
            return None
        found = type(
            "Row", (Row,), {"__slots__": (), "columns": {n: i for i, n in enumerate(names)}}
        )
        _ROW_TYPES[sql] = found
    return found


class _Got:
    __slots__ = ("keys", "rows")

    def __init__(self, keys: set[Any], rows: list[Row]) -> None:
        self.keys = keys
        self.rows = rows


DEFER_ROWS = 200  # a bigger COPY goes as a COPY (its binary rows are cheaper than arrays)

# A data-modifying statement that may be a WITH part, and the table it writes.
_WRITE = re.compile(r"^\s*(?:UPDATE|INSERT INTO|DELETE FROM) ([a-z_]+)\b")
_PARAM = re.compile(r"\$(\d+)")


def _renumber(sql: str, offset: int) -> str:
    """``sql`` with its parameters ``$n`` as ``$(n + offset)``."""
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


def _insert(table: Table) -> str:
    """``table``'s rows as arrays, one per column, inserted (a kept ``COPY``)."""
    arrays = ", ".join(f"${n}::{c.type}[]" for n, c in enumerate(table.columns, 1))
    # constant names and types (the declaration), never a value
    return f"INSERT INTO {table.name} ({', '.join(table.names)}) SELECT * FROM unnest({arrays})"  # noqa: S608


class Batched:
    """A connection for one batch's appliers: the reads announced answered from one combined
    query, the writes kept and sent together (the module docstring); everything else goes to
    the connection itself."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._got: dict[str, _Got] = {}
        self._kept: list[tuple[str, str, Sequence[Any]]] = []  # (table, statement, arguments)
        self.served = 0  # reads answered from the combined query (tests)
        self.statements = 0  # statements sent to PostgreSQL (tests)

    async def load(self, wants: Sequence[Want]) -> None:
        """Read everything ``wants`` announces, in one round trip."""
        merged: dict[str, set[Any]] = {}
        for sql, keys in wants:
            if keys and _row_type(sql) is not None:
                merged.setdefault(sql, set()).update(keys)
        if not merged:
            return
        reads = list(merged.items())
        arrays = ", ".join(
            # the read models' constant statements (of _READ's form), never a value
            f"ARRAY(SELECT ROW(q.*) FROM ({sql.replace('$1', f'${n}')}) AS q)"  # noqa: S608
            for n, (sql, _) in enumerate(reads, 1)
        )
        await self.flush()
        self.statements += 1
        row = await self._conn.fetchrow(f"SELECT {arrays}", *(list(k) for _, k in reads))
        assert row is not None
        for (sql, keys), values in zip(reads, row, strict=True):
            make = _row_type(sql)
            assert make is not None
            self._got[sql] = _Got(keys, [make(v) for v in values])

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        got = self._got.get(sql)
        if got is not None and len(args) == 1:
            wanted = set(args[0])
            if wanted <= got.keys:
                self.served += 1
                return [r for r in got.rows if r[0] in wanted]
        await self.flush()
        self.statements += 1
        return list(await self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        await self.flush()
        self.statements += 1
        return await self._conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self.flush()
        self.statements += 1
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        # Only a write that reads nothing but its parameters may share a statement: a write
        # that reads a table would not see the other parts' writes (one snapshot).
        match = _WRITE.match(sql) if args and sql in PARAMETERS_ONLY else None
        if match is None:  # not one to keep: what is kept goes first
            await self.flush()
            self.statements += 1
            return await self._conn.execute(sql, *args)
        await self._keep(match.group(1), sql, args)
        return ""

    async def executemany(self, sql: str, args: Any) -> None:
        await self.flush()
        self.statements += 1
        await self._conn.executemany(sql, args)

    async def copy_records_to_table(
        self, table_name: str, *, records: Any, columns: Sequence[str] | None = None, **kw: Any
    ) -> str:
        table = TABLES.get(table_name)
        rows = records if isinstance(records, list) else None
        if (
            kw
            or table is None
            or rows is None
            or len(rows) > DEFER_ROWS
            or tuple(columns or ()) != table.names
        ):
            await self.flush()
            self.statements += 1
            return await self._conn.copy_records_to_table(
                table_name, records=records, columns=columns, **kw
            )
        if rows:
            arrays = [[row[i] for row in rows] for i in range(len(table.names))]
            await self._keep(table_name, _insert(table), arrays)
        return f"COPY {len(rows)}"

    async def _keep(self, table: str, sql: str, args: Sequence[Any]) -> None:
        if any(kept == table for kept, _, _ in self._kept):
            await self.flush()  # one write per table per statement (see the module docstring)
        self._kept.append((table, sql, args))

    async def flush(self) -> None:
        """Send the kept writes, as one statement."""
        kept, self._kept = self._kept, []
        if not kept:
            return
        self.statements += 1
        if len(kept) == 1:
            _, sql, args = kept[0]
            await self._conn.execute(sql, *args)
            return
        parts: list[str] = []
        every: list[Any] = []
        for n, (_, sql, args) in enumerate(kept):
            parts.append(f"w{n} AS ({_renumber(sql, len(every))})")
            every.extend(args)
        await self._conn.execute(f"WITH {', '.join(parts)} SELECT 1", *every)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
