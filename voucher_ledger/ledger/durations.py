"""ISO 8601 durations for how long a voucher's credit lasts (``credit_valid_for``): weeks, days,
hours, minutes and seconds (``P90D``, ``PT10S``, ``P1DT12H``), kept as whole seconds. Years and
months are refused: they have no fixed length."""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voucher_ledger.ledger.events import DiscountTerms

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<w>\d{1,6})W)?(?:(?P<d>\d{1,6})D)?"
    r"(?:T(?=\d)(?:(?P<h>\d{1,7})H)?(?:(?P<m>\d{1,9})M)?(?:(?P<s>\d{1,10})S)?)?$"
)
_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
DURATION_RULE = (
    "must be an ISO 8601 duration of weeks, days, hours, minutes or seconds, e.g. P90D or PT10S"
)


def parse_duration(text: str) -> int:
    """Whole seconds of ``text``; ValueError (with DURATION_RULE) when it is not one."""
    found = _DURATION.fullmatch(text.strip().upper()) if len(text) <= 64 else None
    if found is None:
        if re.search(r"^P[^T]*[YM]", text.strip().upper()):
            raise ValueError("years and months have no fixed length: give days, e.g. P90D")
        raise ValueError(DURATION_RULE)
    return sum(int(found[unit] or 0) * size for unit, size in _UNITS)


def format_duration(seconds: int) -> str:
    """The canonical text of a duration: days, then hours, minutes and seconds."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "") if seconds else "PT0S"


# --------------------------------------------------------------- discount durations (issue #21)

_CALENDAR = re.compile(
    r"^P(?!$)(?:(?P<y>\d{1,3})Y)?(?:(?P<mo>\d{1,4})M)?(?:(?P<w>\d{1,6})W)?(?:(?P<d>\d{1,6})D)?"
    r"(?:T(?=\d)(?:(?P<h>\d{1,7})H)?(?:(?P<m>\d{1,9})M)?(?:(?P<s>\d{1,10})S)?)?$"
)
DISCOUNT_DURATION_RULE = (
    'must be "once", "forever" or an ISO 8601 duration, e.g. P3M (three months) or P30D'
)


def parse_discount_duration(text: str) -> str:
    """The canonical text of a discount's duration: ``once``, ``forever``, or an ISO 8601
    duration (calendar years and months allowed: a discount "for 3 months" ends on the same
    day three months later); ValueError (with DISCOUNT_DURATION_RULE) otherwise."""
    value = text.strip()
    if value.lower() in ("once", "forever"):
        return value.lower()
    found = _CALENDAR.fullmatch(value.upper()) if len(value) <= 64 else None
    if found is None or not any(found.groupdict().values()):
        raise ValueError(DISCOUNT_DURATION_RULE)
    if all(int(v) == 0 for v in found.groupdict().values() if v is not None):
        raise ValueError("a discount's duration must be longer than nothing")
    return value.upper()


def discount_ends_at(start: datetime, duration: str) -> datetime | None:
    """When a discount of ``duration`` started at ``start`` ends (None: never; ``once``: at
    ``start``, it applies to the order that redeemed it only)."""
    if duration == "forever":
        return None
    if duration == "once":
        return start
    found = _CALENDAR.fullmatch(duration)
    if found is None:
        raise ValueError(DISCOUNT_DURATION_RULE)
    months = int(found["y"] or 0) * 12 + int(found["mo"] or 0)
    at = start
    if months:
        total = at.year * 12 + (at.month - 1) + months
        year, month = divmod(total, 12)
        day = min(at.day, calendar.monthrange(year, month + 1)[1])
        at = at.replace(year=year, month=month + 1, day=day)
    seconds = sum(int(found[u] or 0) * size for u, size in _UNITS)
    return at + timedelta(seconds=seconds)


def discount_text(
    terms_kind: str,
    percent: int | None,
    amount_baisa: int | None,
    applies_to: Sequence[str] | None,
    duration: str,
) -> str:
    """How people say it: "20% off add-ons for 3 months", "5 OMR off once"."""
    if terms_kind == "percent_off":
        what = f"{percent}% off"
    else:
        whole, rest = divmod(amount_baisa or 0, 1000)
        what = f"{whole}.{rest:03d} OMR off" if rest else f"{whole} OMR off"
    names = {"plans": "plans", "addons": "add-ons", "apps": "apps"}
    if applies_to:
        what += " " + " and ".join(names[a] for a in applies_to)
    if duration == "once":
        return what + " (this order)"
    if duration == "forever":
        return what + " forever"
    return what + " for " + _spoken(duration)


def _spoken(duration: str) -> str:
    found = _CALENDAR.fullmatch(duration)
    if found is None:
        return duration
    words = (
        ("y", "year"),
        ("mo", "month"),
        ("w", "week"),
        ("d", "day"),
        ("h", "hour"),
        ("m", "minute"),
        ("s", "second"),
    )
    parts = [
        f"{int(found[k])} {w}{'s' if int(found[k]) != 1 else ''}"
        for k, w in words
        if found[k] and int(found[k])
    ]
    return ", ".join(parts)


def gives(credit_baisa: int, terms: DiscountTerms | None) -> dict[str, Any]:
    """What a voucher gives, as its answers say it: ``kind``, a discount's terms (null for a
    credit voucher) and ``summary`` in words ("25 OMR credit", "20% off add-ons for 3
    months")."""
    if terms is None:
        return {
            "kind": "credit",
            "percent_off": None,
            "amount_off_omr": None,
            "amount_off_baisa": None,
            "applies_to": None,
            "duration": None,
            "summary": f"{credit_baisa / 1000:g} OMR credit",
        }
    amount = terms.amount_off_baisa
    return {
        "kind": terms.kind,
        "percent_off": terms.percent_off,
        "amount_off_omr": amount / 1000 if amount is not None else None,
        "amount_off_baisa": amount,
        "applies_to": terms.applies_to,
        "duration": terms.duration,
        "summary": discount_text(
            terms.kind, terms.percent_off, amount, terms.applies_to, terms.duration
        ),
    }
