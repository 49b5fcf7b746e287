"""Time travel: a voucher's state as of a past moment, folded from its events on the stream.

The code's events are loaded in stream order (the event store's ``load``) and folded with the
decider's own ``fold`` up to the first event after the moment asked for: ``seq`` is a stream
sequence (inclusive), ``at`` an instant compared with each event's ``occurred_at`` (inclusive).
Both bounds take a prefix of the history, so the state is one the voucher really had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from voucher_ledger.commands.store import EventStore
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.durations import format_duration, gives
from voucher_ledger.ledger.events import RecordedEvent, VoucherRevoked
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.ledger.voucher import VoucherView, fold


class BadTimestamp(ValueError):
    """A timestamp that is not ISO 8601 with a time zone; the message says what is expected."""


_TIMESTAMP_HINT = "an ISO 8601 timestamp with a time zone, e.g. 2026-11-21T12:00:00Z"
_SPACED_OFFSET = re.compile(r"^(.*\d) (\d\d:?\d\d)$")


def parse_timestamp(raw: str, *, name: str = "at") -> datetime:
    """ISO 8601 / RFC 3339 with a time zone (``Z`` or ``+04:00``), returned in UTC.

    A ``+`` that a query string decoded to a space (``...T12:00:00 04:00``) is read as ``+``."""
    text = raw.strip()
    if not text or len(text) > 64 or not text.isascii():
        raise BadTimestamp(f"{name} must be {_TIMESTAMP_HINT}")
    spaced = _SPACED_OFFSET.match(text)
    if spaced and "T" in text:
        text = f"{spaced.group(1)}+{spaced.group(2)}"
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadTimestamp(f"{name} must be {_TIMESTAMP_HINT}") from exc
    if value.tzinfo is None:
        raise BadTimestamp(f"{name} needs a time zone (Z or +hh:mm): {_TIMESTAMP_HINT}")
    try:
        value = value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise BadTimestamp(f"{name} is out of range: years 1-9999 in UTC") from exc
    if value in _ENDS:
        # The first and last moments Python has are PostgreSQL's -infinity and infinity to
        # asyncpg, read back without a time zone (a voucher or campaign whose expires_at was
        # 9999-12-31T23:59:59.999999Z made every list of them a 500; found by schemathesis).
        raise BadTimestamp(
            f"{name} is out of range: years 1-9999 in UTC, after 0001-01-01T00:00:00Z and "
            "before 9999-12-31T23:59:59.999999Z"
        )
    return value


_ENDS = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class VoucherAsOf:
    """A voucher's public state at one point of its history."""

    view: VoucherView
    revoked_at: datetime | None
    events: int  # how many of the code's events were folded
    # the moment asked for (None: a stream position); not part of the state it names
    at: datetime | None = field(default=None, compare=False)

    def detail(self) -> dict[str, object]:
        """The fields of ``GET /billing/vouchers/{code}`` (``VoucherDetail``)."""
        v = self.view
        return {
            "code": v.code,
            "credit_omr": v.credit_baisa // BAISA,
            "credit_baisa": v.credit_baisa,
            "description": v.description,
            "active": v.active,
            "max_redemptions": v.max_redemptions,
            "times_redeemed": v.times_redeemed,
            "created_at": v.created_at,
            "updated_at": v.updated_at,
            "starts_at": v.starts_at,
            "expires_at": v.expires_at,
            "plans": v.plans,
            "min_order_omr": v.min_order_baisa // BAISA,
            "min_order_baisa": v.min_order_baisa,
            "new_organizations_only": v.new_organizations_only,
            "credit_valid_for": format_duration(v.credit_valid_for_seconds)
            if v.credit_valid_for_seconds
            else None,
            "revoked": v.revoked,
            "revoked_at": self.revoked_at,
            # as of that moment: its window then, not now
            "accepting_redemptions": v.accepting_at(self.at)
            if self.at
            else v.accepting_redemptions,
            "last_seq": v.last_seq,
            **gives(v.credit_baisa, v.discount),
        }


def history_until(
    history: list[RecordedEvent], *, at: datetime | None = None, seq: int | None = None
) -> list[RecordedEvent]:
    """The prefix of ``history`` up to ``at`` (``occurred_at <= at``) and ``seq`` (inclusive)."""
    if at is not None and at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    out: list[RecordedEvent] = []
    for recorded in history:
        if seq is not None and recorded.seq > seq:
            break
        if at is not None and recorded.envelope.occurred_at > at:
            break
        out.append(recorded)
    return out


def state_of(
    code: str,
    history: list[RecordedEvent],
    *,
    at: datetime | None = None,
    seq: int | None = None,
) -> VoucherAsOf | None:
    """Fold the prefix of ``history``; None when the voucher had not been issued by then."""
    prefix = history_until(history, at=at, seq=seq)
    if not prefix:
        return None
    state = fold(code, prefix)
    if not state.issued:
        return None
    revoked_at = None
    if state.revoked:
        for recorded in reversed(prefix):
            if isinstance(recorded.envelope.event, VoucherRevoked):
                revoked_at = recorded.envelope.occurred_at
                break
    return VoucherAsOf(view=state.view(), revoked_at=revoked_at, events=len(prefix), at=at)


async def voucher_as_of(
    store: EventStore,
    layout: Layout,
    code: str,
    *,
    at: datetime | None = None,
    seq: int | None = None,
) -> VoucherAsOf | None:
    """Load ``code``'s events from the stream and fold them up to ``at`` / ``seq``.

    ``code`` must be normalised (``ledger.codes.normalise_code``). Raises the event store's
    ``EventStoreUnavailable`` / ``CorruptEvent`` when the stream cannot be read."""
    history = await store.load(layout.voucher_subject(code))
    return state_of(code, history, at=at, seq=seq)
