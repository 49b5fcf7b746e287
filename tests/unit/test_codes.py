"""Voucher code normalisation, identifier validation and the subject layout."""

from __future__ import annotations

import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.codes import (
    CUSTOMER_ID_MAX,
    normalise_code,
    validate_command_id,
    validate_customer_id,
)
from voucher_ledger.ledger.errors import InvalidInput

CANONICAL = re.compile(r"^[A-Z0-9][A-Z0-9_-]{2,63}$")

# ------------------------------------------------------------------------------ normalise_code


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" launch-50 ", "LAUNCH-50"),
        ("welcome50", "WELCOME50"),
        ("MiXeD_case-1", "MIXED_CASE-1"),
        ("abc", "ABC"),
        ("9ab", "9AB"),
        ("\tcode_1\n", "CODE_1"),
    ],
)
def test_normalise_code_strips_and_upper_cases(raw: str, expected: str) -> None:
    assert normalise_code(raw) == expected


def test_normalise_code_accepts_exactly_three_characters() -> None:
    assert normalise_code("a1b") == "A1B"


def test_normalise_code_accepts_exactly_sixty_four_characters() -> None:
    raw = "a" * 64
    assert normalise_code(raw) == "A" * 64


@pytest.mark.parametrize(
    "raw",
    [
        "A.B",
        "ABC.DEF",
        "*",
        "ABC*",
        ">",
        "ABC>",
        "a b",
        "ABC DEF",
        "AB",
        "A",
        "A" * 65,
        "",
        "   ",
        "CAFÉ1",
        "straße",
        "ＡＢＣ",  # full-width letters: upper-case but not ASCII
        "ABC\u00a0",  # trailing non-breaking space is not stripped: it is not ASCII
        "-AB",
        "-ABC",
        "_ABC",
        "AB\n",
        "AB\x00C",
        "ABC/DEF",
    ],
)
def test_normalise_code_rejects_invalid_codes(raw: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalise_code(raw)
    assert info.value.field == "code"
    assert info.value.reason == "invalid_input"
    assert info.value.context == {"field": "code"}


@pytest.mark.parametrize("raw", [123, None, b"ABC", ["ABC"], 1.5])
def test_normalise_code_rejects_non_strings(raw: object) -> None:
    with pytest.raises(InvalidInput, match="must be a string") as info:
        normalise_code(raw)
    assert info.value.field == "code"


def test_normalise_code_rejects_sharp_s_instead_of_upper_casing_to_ss() -> None:
    # "straße".upper() == "STRASSE", a valid-looking code that must never be produced.
    assert "straße".upper() == "STRASSE"
    with pytest.raises(InvalidInput, match="ASCII"):
        normalise_code("straße")


def test_normalise_code_reports_a_blank_code_as_required() -> None:
    with pytest.raises(InvalidInput, match="required"):
        normalise_code("   ")


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=80))
def test_normalise_code_yields_only_canonical_codes_and_is_idempotent(raw: str) -> None:
    try:
        code = normalise_code(raw)
    except InvalidInput as err:
        field = err.field
        code = None
    if code is None:
        assert field == "code"
        return
    assert CANONICAL.fullmatch(code), code
    assert not any(ch in code for ch in ". *>")
    assert code.isascii()
    assert normalise_code(code) == code


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{2,63}", fullmatch=True), st.text(" \t\n", max_size=3)
)
def test_normalise_code_accepts_every_well_formed_code(body: str, pad: str) -> None:
    assert normalise_code(pad + body + pad) == body.upper()


# ------------------------------------------------------------------------ command / customer ids


@pytest.mark.parametrize(
    "raw",
    ["a", "0", "cmd-1", "A_b.c:d-e", "550e8400-e29b-41d4-a716-446655440000", "x" * 128],
)
def test_validate_command_id_accepts_well_formed_ids(raw: str) -> None:
    assert validate_command_id(raw) == raw


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "-abc",
        ".abc",
        ":abc",
        "_abc",
        "a b",
        "a*b",
        "a>b",
        "a/b",
        "abc\n",
        "x" * 129,
        "é",
        None,
        42,
        b"abc",
    ],
)
def test_validate_command_id_rejects_malformed_ids(raw: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_command_id(raw)
    assert info.value.field == "command_id"


@pytest.mark.parametrize(
    "raw",
    ["c", "customer-1", "user@example.com", "名前", " padded ", "a.b*c>d", "x" * CUSTOMER_ID_MAX],
)
def test_validate_customer_id_accepts_printable_ids_verbatim(raw: str) -> None:
    assert validate_customer_id(raw) == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "required"),
        ("   ", "required"),
        (None, "required"),
        (7, "required"),
        ("x" * (CUSTOMER_ID_MAX + 1), "longer than"),
        ("abc\x00", "control"),
        ("a\nb", "control"),
        ("a\tb", "control"),
        ("del\x7f", "control"),
    ],
)
def test_validate_customer_id_rejects_blank_long_or_control_ids(raw: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        validate_customer_id(raw)
    assert info.value.field == "customer_id"


# ------------------------------------------------------------------------------------ Layout


def test_partition_of_is_crc32_modulo_partitions_and_stable() -> None:
    layout = Layout(prefix="ledger", partitions=16)
    for code in ["WELCOME50", "LAUNCH-50", "ABC", "Z" * 64]:
        first = layout.partition_of(code)
        assert first == layout.partition_of(code)
        assert first == zlib.crc32(code.encode()) % 16
        assert 0 <= first < 16


def test_partition_of_known_value_does_not_depend_on_process_hash_seed() -> None:
    # crc32("WELCOME50") is a fixed number; Python's salted hash() would vary across runs.
    assert Layout(prefix="ledger", partitions=7).partition_of("WELCOME50") == (
        zlib.crc32(b"WELCOME50") % 7
    )
    assert Layout(prefix="ledger", partitions=1).partition_of("WELCOME50") == 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.from_regex(r"[A-Z0-9][A-Z0-9_-]{2,63}", fullmatch=True),
    st.integers(min_value=1, max_value=1024),
)
def test_partition_of_is_always_in_range(code: str, partitions: int) -> None:
    layout = Layout(prefix="ledger", partitions=partitions)
    assert 0 <= layout.partition_of(code) < partitions


def test_voucher_subject_is_prefix_events_voucher_code() -> None:
    layout = Layout(prefix="ledger", partitions=8)
    assert layout.voucher_subject("WELCOME50") == "ledger.events.voucher.WELCOME50"


def test_voucher_command_subject_includes_the_partition() -> None:
    layout = Layout(prefix="vl_test1", partitions=8)
    p = zlib.crc32(b"LAUNCH-50") % 8
    assert layout.voucher_command_subject("LAUNCH-50") == f"vl_test1.commands.{p}.voucher.LAUNCH-50"
    assert layout.partition_filter(p) == f"vl_test1.commands.{p}.>"


@pytest.mark.parametrize("code", ["A.B", "a", "abc", "ABC.DEF", "AB*", ">", "", "AB C", "ABC\n"])
def test_subjects_refuse_invalid_codes(code: str) -> None:
    layout = Layout(prefix="ledger", partitions=4)
    with pytest.raises(ValueError, match="invalid code"):
        layout.voucher_subject(code)
    with pytest.raises(ValueError, match="invalid code"):
        layout.voucher_command_subject(code)


def test_layout_derives_stream_names_from_the_upper_cased_prefix() -> None:
    layout = Layout(prefix="ledger", partitions=4)
    assert layout.event_stream == "LEDGER_EVENTS"
    assert layout.command_stream == "LEDGER_COMMANDS"
    assert layout.lease_bucket == "LEDGER_LEASES"
    assert layout.processor_durable(3) == "LEDGER_PROC_3"
    assert layout.events_wildcard == "ledger.events.>"
    assert layout.commands_wildcard == "ledger.commands.>"


@pytest.mark.parametrize("prefix", ["ledger", "a", "l3dger_x", "a" * 32])
def test_layout_accepts_lower_case_prefixes(prefix: str) -> None:
    assert Layout(prefix=prefix, partitions=1).prefix == prefix


@pytest.mark.parametrize(
    "prefix", ["Ledger", "a.b", "", "1abc", "_abc", "a-b", "a b", "a*", "a>", "a" * 33, "ledger\n"]
)
def test_layout_rejects_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid subject prefix"):
        Layout(prefix=prefix, partitions=1)


@pytest.mark.parametrize("partitions", [0, -1, 1025])
def test_layout_rejects_partition_counts_out_of_range(partitions: int) -> None:
    with pytest.raises(ValueError, match="partitions"):
        Layout(prefix="ledger", partitions=partitions)
