"""The aggregates' ``replace`` makes what :func:`dataclasses.replace` makes, for every state
record the deciders copy, and refuses what it cannot copy the same way."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import immutables
import pytest

from voucher_ledger.ledger import campaign, global_voucher, voucher, wallet
from voucher_ledger.ledger.records import replace

AT = datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC)

SAMPLES: list[tuple[Any, dict[str, Any]]] = [
    (
        wallet.initial_state("org-1"),
        {"balance_baisa": 5000, "last_seq": 7, "orders": immutables.Map({"o": None})},
    ),
    (wallet.Lot(100, AT, "CODE", "o-1", 0), {"left": 40}),
    (wallet.HeldGrant(100, "CODE", "o-1"), {"revoked": True}),
    (voucher.initial_state("CODE-1"), {"last_seq": 3, "times_redeemed": 2, "updated_at": AT}),
    (campaign.fold("CAMP-1", []), {"last_seq": 9, "updated_at": AT}),
    (global_voucher.fold("GLOBAL-1", []), {"last_seq": 4}),
]


@pytest.mark.parametrize(("record", "changes"), SAMPLES, ids=lambda v: type(v).__name__)
def test_replace_makes_what_dataclasses_replace_makes(record: Any, changes: dict[str, Any]) -> None:
    ours = replace(record, **changes)
    theirs = dataclasses.replace(record, **changes)
    assert type(ours) is type(theirs)
    assert ours == theirs
    assert ours is not record
    for f in dataclasses.fields(record):
        assert getattr(ours, f.name) is getattr(theirs, f.name)
    # the original is untouched, and a copy without changes equals it
    assert replace(record) == record
    assert dataclasses.replace(record) == record


def test_an_unknown_field_is_refused_as_dataclasses_refuses_it() -> None:
    state = wallet.initial_state("org-1")
    with pytest.raises(TypeError, match="no field"):
        replace(state, balance=1)
    with pytest.raises(TypeError):
        dataclasses.replace(state, balance=1)  # type: ignore[call-arg]


def test_only_frozen_slotted_records_without_post_init_are_copied() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            assert self.a >= 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    for record in (NoSlots(1), Checked(1), Derived(1)):
        with pytest.raises(TypeError):
            replace(record, a=2)
