"""The fast deterministic id is the standard library's uuid5, character for character."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from voucher_ledger.ledger.ids import uuid5_text

NAMESPACES = [
    uuid.UUID("6f1c2a4e-2d3b-4c55-9a57-5f0d3f7b9e11"),
    uuid.NAMESPACE_DNS,
    uuid.UUID(int=0),
]


@given(st.sampled_from(NAMESPACES), st.text())
def test_it_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_known_values() -> None:
    # A redemption id as every earlier version recorded it (code, customer, command id).
    ns = NAMESPACES[0]
    name = "LAUNCH-50\x00u-42\x00checkout-7f3a"
    assert uuid5_text(ns, name) == str(uuid.uuid5(ns, name))
    assert uuid5_text(uuid.NAMESPACE_DNS, "python.org") == "886313e1-3b8a-5372-9b90-0c9aee199e5d"
