"""Money: integer minor units everywhere inside (baisa for OMR), never floats."""

from __future__ import annotations

BAISA = 1000
"""Baisa in one Omani rial."""


def whole_omr(baisa: int) -> int:
    """Whole OMR, truncated toward zero (a debit of 9.5 OMR shows as -9, never -10)."""
    return -(-baisa // BAISA) if baisa < 0 else baisa // BAISA
