"""ISO 8601 durations for how long a voucher's credit lasts (``credit_valid_for``): weeks, days,
hours, minutes and seconds (``P90D``, ``PT10S``, ``P1DT12H``), kept as whole seconds. Years and
months are refused: they have no fixed length."""

from __future__ import annotations

import re

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
