"""Voucher code normalisation and the identifiers that may reach a NATS subject."""

from __future__ import annotations

import re

from voucher_ledger.ledger.errors import InvalidInput

CODE_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9_-]{2,63}$")
CODE_RULE = "3-64 characters A-Z, 0-9, '_' or '-', starting with a letter or digit"

COMMAND_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
CUSTOMER_ID_MAX = 256
SEARCH_MAX = 64

# What the API accepts as a code before normalisation, as a regular expression that JSON Schema
# (ECMA 262) and Python read alike: the ASCII characters ``str.strip`` removes, around a code of
# either case. /openapi.json documents it; a unit test proves it matches ``normalise_code``.
_SPACE = r"[\t-\r\x1c-\x20]*"
CODE_INPUT_PATTERN = rf"^{_SPACE}[A-Za-z0-9][A-Za-z0-9_-]{{2,63}}{_SPACE}$"
PROMO_INPUT_PATTERN = rf"^{_SPACE}([A-Za-z0-9][A-Za-z0-9_-]{{2,63}}{_SPACE})?$"  # blank: none
SEARCH_INPUT_PATTERN = rf"^{_SPACE}[A-Za-z0-9_-]{{1,{SEARCH_MAX}}}{_SPACE}$"


def normalise_code(raw: object) -> str:
    """Return the canonical form of a voucher code (``strip().upper()``) or raise InvalidInput.

    The check runs after normalisation, so a blank code is rejected (the seed stored it as '').
    Non-ASCII input is rejected before upper-casing, because ``"ß".upper()`` is ``"SS"``.
    """
    if not isinstance(raw, str):
        raise InvalidInput("code", "code must be a string")
    if not raw.isascii():
        raise InvalidInput("code", f"code must be ASCII: {CODE_RULE}")
    code = raw.strip().upper()
    if not code:
        raise InvalidInput("code", "code is required")
    if not CODE_PATTERN.fullmatch(code):
        raise InvalidInput("code", f"invalid code: {CODE_RULE}")
    return code


def normalise_search(raw: str) -> str:
    """A list search (``?q=``): part of a code, normalised like one, or InvalidInput."""
    search = raw.strip().upper() if raw.isascii() else ""
    if not search or len(search) > SEARCH_MAX or not SEARCH_PATTERN.fullmatch(search):
        raise InvalidInput("q", "q must be part of a code: A-Z, 0-9, '_' or '-'")
    return search


SEARCH_PATTERN = re.compile(r"^[A-Z0-9_-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_command_id(raw: object) -> str:
    if not isinstance(raw, str) or not COMMAND_ID_PATTERN.fullmatch(raw):
        raise InvalidInput(
            "command_id",
            "command_id must be 1-128 characters of A-Z a-z 0-9 '_' '.' ':' '-'",
        )
    return raw


def validate_customer_id(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("customer_id", "customer_id is required")
    if len(raw) > CUSTOMER_ID_MAX:
        raise InvalidInput("customer_id", f"customer_id is longer than {CUSTOMER_ID_MAX}")
    if _CONTROL.search(raw):
        raise InvalidInput("customer_id", "customer_id contains control characters")
    return raw
