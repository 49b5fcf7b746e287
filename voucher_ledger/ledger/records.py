"""``replace`` for the aggregates' frozen, slotted state records, without
:func:`dataclasses.replace`'s cost.

``dataclasses.replace`` reads every field through the field list and calls ``__init__`` with
keywords; a wallet's ``order.placed`` is folded with fifteen of them, which was most of the
fold's time (about 120 µs an event, folded twice by the processor: once to decide on it, once
with its stream sequence). This copies the slots and sets the changed ones, in one generated
function per class. It serves only
records that ``__init__`` would not change: frozen dataclasses with slots, no ``__post_init__``,
no init-only or ``init=False`` fields (checked once per class, at first use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Copier = Callable[[Any, dict[str, Any]], Any]
_COPIERS: dict[type, tuple[_Copier, frozenset[str]]] = {}


def _copier(cls: type) -> tuple[_Copier, frozenset[str]]:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: use dataclasses.replace")
    fields = dataclasses.fields(cls)
    if any(not f.init for f in fields):
        raise TypeError(f"{cls.__name__} has fields outside __init__: use dataclasses.replace")
    names = [f.name for f in fields]
    # One straight-line function per class, as dataclasses writes its __init__: each slot
    # set from the changes or from the record copied (the names are the class's own fields).
    lines = ["def copy(obj, changes):", "    new = new_(cls)"]
    lines += [
        f"    set_(new, {n!r}, changes[{n!r}] if {n!r} in changes else obj.{n})" for n in names
    ]
    lines.append("    return new")
    scope: dict[str, Any] = {"new_": object.__new__, "set_": object.__setattr__, "cls": cls}
    exec("\n".join(lines), scope)  # noqa: S102 - generated from the field names only
    found = (scope["copy"], frozenset(names))
    _COPIERS[cls] = found
    return found


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes`` (as :func:`dataclasses.replace` would make it)."""
    cls = type(obj)
    copy, known = _COPIERS.get(cls) or _copier(cls)
    if not known.issuperset(changes):
        unknown = sorted(set(changes) - known)
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    new: T = copy(obj, changes)
    return new
