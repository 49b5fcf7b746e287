"""A batch's reads in one round trip (issue #19).

Each read model's applier reads the rows its batch touches that already exist, one ``SELECT``
per table: seven round trips for a checkout's ``order.placed`` before anything is written. A
read model may say beforehand which reads it will make (``wants``: the statement and the keys);
the projector sends all of them as ONE query, each read an array of row values::

    SELECT ARRAY(SELECT ROW(q.*) FROM (<read 1, its $1 as $1>) AS q),
           ARRAY(SELECT ROW(q.*) FROM (<read 2, its $1 as $2>) AS q), ...

and hands the appliers a connection (:class:`Prefetched`) whose ``fetch`` answers a read from
those rows when it was announced with at least the keys asked for, and goes to PostgreSQL
otherwise. So an announcement is only ever a guess: a read announced with too few keys, or not
at all, is made as before, and extra keys only bring rows nobody asks for. What the appliers
read is what they would have read, in the same transaction.

A read is a constant ``SELECT <columns> FROM <table> WHERE <first column> = ANY($1::<type>[])``
(``Table.select`` and the like): rows are matched to keys on their first column, and answered
as :class:`Row`, which reads like an ``asyncpg.Record`` (``row["name"]``, ``list(row)``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from voucher_ledger.projections.model import Conn, PlainEvent

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


class Prefetched:
    """A connection whose announced reads are answered from one combined query (the module
    docstring); everything else goes to the connection itself."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._got: dict[str, _Got] = {}
        self.served = 0  # reads answered from the combined query (tests)

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
        return list(await self._conn.fetch(sql, *args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
