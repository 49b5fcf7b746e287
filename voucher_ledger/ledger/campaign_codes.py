"""Campaign ids and the shape of a campaign's generated codes (issue #21).

A generated code names its campaign: ``[PREFIX-]TAG-RANDOM``, where ``TAG`` is the campaign's
id (6 characters) and ``RANDOM`` 10 characters, both from :data:`ALPHABET`. Every command for
such a code is a command of its campaign (``("campaign", TAG)``: the campaign's subject and
partition), so the campaign decides its codes one after another, and its cap and budget are as
exact as a single code's (``ledger/campaign.py``). The shape is reserved: a single voucher of
this shape cannot be issued (the campaign refuses the issue).

The alphabet has no look-alikes: of each group that reads alike on a printed card (0/O/Q/D,
1/I/L, 2/Z, 5/S, 8/B, U/V, 6/G) at most one member, and none of 0, O, 1, I, L. 24 symbols
give 4.58 bits a character: 10 random characters are 45.8 bits (at least 40 asked).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from voucher_ledger.ledger.errors import InvalidInput

ALPHABET = "23456789ACEFHJKMNPRTVWXY"
# Each group reads alike; the alphabet holds at most one member of each (a unit test checks).
LOOK_ALIKES = ("0ODQ", "1IL", "2Z", "5S", "8B", "UV", "6G")
TAG_LENGTH = 6
RANDOM_LENGTH = 10
PREFIX_MAX = 16
_A = f"[{ALPHABET}]"
CAMPAIGN_ID_PATTERN = re.compile(rf"^{_A}{{{TAG_LENGTH}}}$")
CAMPAIGN_CODE_PATTERN = re.compile(
    rf"^(?:[A-Z0-9]{{1,{PREFIX_MAX}}}-)?({_A}{{{TAG_LENGTH}}})-{_A}{{{RANDOM_LENGTH}}}$"
)
PREFIX_PATTERN = re.compile(rf"^[A-Z0-9]{{1,{PREFIX_MAX}}}$")
CAMPAIGN_ID_RULE = f"{TAG_LENGTH} characters of {ALPHABET}"

# Random bytes to alphabet characters, C-speed: a byte below 24 * 10 = 240 maps to
# ALPHABET[byte % 24] (uniform), a byte from 240 on is dropped (rejection, no modulo bias).
_USABLE = len(ALPHABET) * (256 // len(ALPHABET))
_TABLE = bytes(ord(ALPHABET[b % len(ALPHABET)]) if b < _USABLE else 0 for b in range(256))
_DROP = bytes(range(_USABLE, 256))

RandomBytes = Callable[[int], bytes]


def campaign_of(code: str) -> str | None:
    """The campaign id a (normalised) code names, or None for a code of no campaign."""
    if len(code) < TAG_LENGTH + RANDOM_LENGTH + 1:
        return None
    match = CAMPAIGN_CODE_PATTERN.fullmatch(code)
    return match.group(1) if match is not None else None


def validate_campaign_id(raw: object) -> str:
    if not isinstance(raw, str) or not raw.isascii():
        raise InvalidInput("campaign_id", f"campaign id must be {CAMPAIGN_ID_RULE}")
    value = raw.strip().upper()
    if not CAMPAIGN_ID_PATTERN.fullmatch(value):
        raise InvalidInput("campaign_id", f"campaign id must be {CAMPAIGN_ID_RULE}")
    return value


def normalise_prefix(raw: object) -> str | None:
    """A code prefix: 1-16 of A-Z and 0-9 (upper-cased), or None (blank or absent)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.isascii():
        raise InvalidInput("prefix", f"prefix must be 1-{PREFIX_MAX} characters A-Z or 0-9")
    value = raw.strip().upper()
    if not value:
        return None
    if not PREFIX_PATTERN.fullmatch(value):
        raise InvalidInput("prefix", f"prefix must be 1-{PREFIX_MAX} characters A-Z or 0-9")
    return value


def random_text(length: int, random: RandomBytes) -> str:
    """``length`` characters of :data:`ALPHABET`, uniform, from ``random`` bytes."""
    out = b""
    while len(out) < length:
        need = length - len(out)
        out += random(need + need // 8 + 8).translate(_TABLE, _DROP)
    return out[:length].decode()


def new_campaign_id(random: RandomBytes) -> str:
    return random_text(TAG_LENGTH, random)


def generate_codes(
    campaign_id: str,
    prefix: str | None,
    count: int,
    random: RandomBytes,
    taken: Callable[[str], bool],
) -> list[str]:
    """``count`` new codes of the campaign, none ``taken`` (already the campaign's) and none
    twice. A collision (about one in 6 * 10^13 per pair) is drawn again."""
    head = f"{prefix}-{campaign_id}-" if prefix else f"{campaign_id}-"
    out: dict[str, None] = {}
    while len(out) < count:
        need = count - len(out)
        pool = random_text(need * RANDOM_LENGTH, random)
        for i in range(0, len(pool), RANDOM_LENGTH):
            code = head + pool[i : i + RANDOM_LENGTH]
            if code not in out and not taken(code):
                out[code] = None
    return list(out)


def alphabet_is_clean(alphabet: Iterable[str] = ALPHABET) -> bool:
    """No two members of one look-alike group, and none of 0, O, 1, I, L."""
    chars = set(alphabet)
    if chars & set("0O1IL"):
        return False
    return all(len(chars & set(group)) <= 1 for group in LOOK_ALIKES)
