"""The patterns /openapi.json documents for codes, promo codes and searches accept exactly what
the handlers accept (schemathesis generates from them, so a drift would show up as false
failures or, worse, untested inputs)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from voucher_ledger.ledger.codes import (
    CODE_INPUT_PATTERN,
    PROMO_INPUT_PATTERN,
    SEARCH_INPUT_PATTERN,
    normalise_code,
    normalise_search,
)
from voucher_ledger.ledger.errors import InvalidInput

# Near-misses on purpose: every ASCII character (the whitespace that strip() removes among them),
# a few non-ASCII ones, lengths around the 3-64 bounds.
alphabet = st.characters(max_codepoint=0x7F) | st.sampled_from(["ß", "ı", "\u00a0", "\u2028", "Ａ"])
raw = st.text(alphabet=alphabet, max_size=70) | st.from_regex(CODE_INPUT_PATTERN, fullmatch=True)


def accepted(fn: object, value: str) -> bool:
    try:
        fn(value)  # type: ignore[operator]
    except InvalidInput:
        return False
    return True


def documented(pattern: str, value: str) -> bool:
    # JSON Schema's "$" is the end of the string (no trailing-newline exception as in Python).
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


@settings(max_examples=500)
@given(raw)
def test_code_pattern_is_exactly_what_normalise_code_accepts(value: str) -> None:
    assert documented(CODE_INPUT_PATTERN, value) == accepted(normalise_code, value), repr(value)


@settings(max_examples=300)
@given(raw)
def test_promo_pattern_is_a_code_or_blank(value: str) -> None:
    blank = value.strip() == "" and value.isascii()
    assert documented(PROMO_INPUT_PATTERN, value) == (blank or accepted(normalise_code, value))


@settings(max_examples=300)
@given(raw)
def test_search_pattern_is_exactly_what_the_list_search_accepts(value: str) -> None:
    assert documented(SEARCH_INPUT_PATTERN, value) == accepted(normalise_search, value), value


def test_non_ascii_that_upper_cases_to_ascii_is_not_a_search() -> None:
    """ "ß".upper() is "SS": a search, like a code, refuses non-ASCII before upper-casing."""
    for value in ("ß", "ı", "ﬃ"):
        assert not accepted(normalise_search, value)
