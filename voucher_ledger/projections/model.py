"""What the read models share: the events they are applied, the Protocol of a read model, and
the declaration of a table's columns from which its rows are addressed and its statements
built.

Each read model (``vouchers.py``, ``wallets.py``, ``audit.py``) has ONE applier, used by the
live projector and by a rebuild alike: a batch's events are folded in memory, row by row, as
one statement per event would change the rows one event after another; the rows a batch
touches that already exist (from an earlier batch) are read first (in the live projector, all
the read models' reads of a batch in one query: ``prefetch.py``), rows created by the batch
are written once with ``COPY``, rows that existed once with one ``UPDATE … FROM unnest(…)`` per
table, and insert-only rows with ``COPY``. Table names are unqualified: a rebuild sets
``search_path`` to its shadow schema.

This module imports nothing of the projections: the read models build on it, the projector,
the rebuild and the registry on the read models.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeAlias

import asyncpg
import asyncpg.pool

from voucher_ledger.ledger.events import (
    PLACED,
    EventEnvelope,
    decode_envelope,
    decode_plain,
    placed_parts,
)

Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)


class PlainEvent(NamedTuple):
    """An event as the appliers read it: ``doc`` is ``decode_plain``'s envelope (plain dicts,
    validated as the models are), ``raw`` the message body exactly as stored. (A named tuple:
    a frozen dataclass's ``__init__`` cost a microsecond per event.)"""

    seq: int
    doc: dict[str, Any]
    raw: str


def expand_placed(events: Sequence[PlainEvent]) -> Sequence[PlainEvent]:
    """Each ``order.placed`` as its parts (``OrderPlaced.parts``), at its sequence, for the
    read models that are written per part (one credit entry per movement, and so on). The
    last batch's expansion is kept: two read models and their announcements ask for it four
    times a batch (a tuple: nobody changes it)."""
    if _LAST.events is events:
        return _LAST.expanded
    if not any(e.doc["event"]["type"] == PLACED for e in events):
        return events
    out: list[PlainEvent] = []
    for e in events:
        if e.doc["event"]["type"] == PLACED:
            out.extend(
                PlainEvent(e.seq, {**e.doc, "event": p}, e.raw)
                for p in placed_parts(e.doc["event"])
            )
        else:
            out.append(e)
    _LAST.events, _LAST.expanded = events, tuple(out)
    return _LAST.expanded


class _Last:
    """The batch expanded last (known by identity) and its expansion."""

    events: Sequence[PlainEvent] | None = None
    expanded: tuple[PlainEvent, ...] = ()


_LAST = _Last()


def plain_event(seq: int, data: bytes) -> PlainEvent:
    """The event stored at ``seq`` with body ``data``, as the appliers read it."""
    return PlainEvent(seq, decode_plain(data), data.decode())


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """An event decoded into its models (``verify`` and the replay readers)."""

    seq: int
    envelope: EventEnvelope
    raw: str  # the message body exactly as stored


def stream_event(seq: int, data: bytes) -> StreamEvent:
    """The event stored at ``seq`` with body ``data``, decoded."""
    return StreamEvent(seq=seq, envelope=decode_envelope(data), raw=data.decode())


class Projection(Protocol):
    """A read model: its name (its checkpoint's), its tables, and its applier."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    # The tables whose primary key the applier looks rows up by: a rebuild keeps those keys
    # while loading and builds every other key, unique index and foreign key of the tables
    # after the load (bench/README.md, "Rebuild").
    @property
    def keyed(self) -> frozenset[str]: ...

    async def apply(self, conn: Conn, events: Sequence[PlainEvent]) -> None:
        """Apply a batch of events, in stream order, inside the caller's transaction."""
        ...


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # the SQL type its UPDATE's unnest array is cast to
    updated: bool = False  # whether a later event changes it (written by the UPDATE)


TABLES: dict[str, Table] = {}  # every declared table by name (prefetch.py's writes)
# The writes that read nothing but their parameters (each table's UPDATE from unnest, and those
# named by parameters_only): they may share a statement (prefetch.py).
PARAMETERS_ONLY: set[str] = set()


def parameters_only(sql: str) -> str:
    """Declare ``sql`` a write that reads no table, only its parameters (and the rows it
    writes), so prefetch.py may send it together with other such writes."""
    PARAMETERS_ONLY.add(sql)
    return sql


class Table:
    """One declaration of a table's columns, in the order of its rows in memory (lists, or the
    tuples given to ``COPY``): the rows are addressed by ``index[name]`` (read into module
    constants, not looked up per event), and the statements are built from it. The first
    column is the key the UPDATE matches rows on."""

    def __init__(self, name: str, *columns: Column, where: str = "") -> None:
        TABLES[name] = self
        self.name = name
        self.columns = columns
        self.names = tuple(c.name for c in columns)
        self.index = {n: i for i, n in enumerate(self.names)}
        self._pick = operator.itemgetter(*self.names)
        self.key = self.names[0]
        # indexes of the columns the UPDATE writes, in its argument order (after the key)
        self.updated = tuple(i for i, c in enumerate(columns) if c.updated)
        # Constant names and types only (from the declaration above).
        self.select = (
            f"SELECT {', '.join(self.names)} FROM {name} "  # noqa: S608
            f"WHERE {self.key} = ANY($1::{columns[0].type}[])"
        )
        sets = [columns[i] for i in self.updated]
        args = (columns[0], *sets)
        arrays = ", ".join(f"${n}::{c.type}[]" for n, c in enumerate(args, 1))
        self.update = (
            f"UPDATE {name} SET "  # noqa: S608
            + ", ".join(f"{c.name} = d.{c.name}" for c in sets)
            + f" FROM unnest({arrays}) AS d({', '.join(c.name for c in args)})"
            + f" WHERE {name}.{self.key} = d.{self.key}"
            + (f" AND {where}" if where else "")
        )
        parameters_only(self.update)

    def new_row(self, **values: Any) -> list[Any]:
        """A row from a value for every column, by name (a missing or unknown name raises)."""
        if len(values) != len(self.names):
            raise KeyError(f"{self.name}: columns {sorted(set(self.names) ^ set(values))}")
        return list(self._pick(values))  # KeyError naming a missing column

    def update_args(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """The UPDATE's arguments for ``rows``: one array per column it takes, keys first."""
        return [[r[i] for r in rows] for i in (0, *self.updated)]
