"""The hub's trail of its Sovereigns (issue #22), folded in memory: no SQL, no NATS.

The trail is the hub's stream ``<PREFIX>_SOVEREIGNS``: every event of every Sovereign, its
subject renamed ``<prefix>.sovereign.<name>.events.X`` (``service/federation.py``). Three of a
Sovereign's events count here, of every code (global or not):

* ``voucher.redeemed``: a redemption (one per ``redemption_id`` and Sovereign; a repeat of one
  already seen is ignored, as the read model's primary key ignores it);
* ``voucher.redemption_reversed``: that redemption no longer stands (the first reversal of a
  standing redemption counts, the others are ignored);
* ``voucher.share_released``: all the slots of a global code the Sovereign gave back to the hub
  (``released_total``, cumulative);
* ``voucher.share_received``: from this event on the code is a global code's share on that
  Sovereign (as the hub's allocator reads the trail): before it, or without it, the code is a
  voucher of the Sovereign's own (a Sovereign with such a voucher refuses the global share).

``verify`` folds the trail with :class:`TrailFold` (the read model's applier,
``sovereign_trail.py``, is its own code) and checks the global codes' shares with
:func:`check_shares`; the report's per-Sovereign totals are :func:`report_lines`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from voucher_ledger.ledger.events import (
    EventEnvelope,
    RedemptionReversed,
    ShareReceived,
    ShareReleased,
    VoucherRedeemed,
    decode_envelope,
)

REDEEMED = "voucher.redeemed"
REVERSED = "voucher.redemption_reversed"
RELEASED = "voucher.share_released"
RECEIVED = "voucher.share_received"
APPLIED = frozenset((REDEEMED, REVERSED))  # what the read model keeps
COUNTED = frozenset((REDEEMED, REVERSED, RELEASED, RECEIVED))  # what verify's share check reads


def trail_sovereign(prefix: str, subject: str) -> str | None:
    """The Sovereign a trail subject names (``<prefix>.sovereign.<name>.events.…``); None for
    a subject of another shape."""
    head = f"{prefix}.sovereign."
    if not subject.startswith(head):
        return None
    name, _, rest = subject[len(head) :].partition(".")
    if not name or not rest.startswith("events."):
        return None
    return name


def event_type(data: bytes) -> str | None:
    """The type of the event in an envelope's body, without validating the rest (a Sovereign
    may run a newer version with event types this build does not know)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    event = doc.get("event") if isinstance(doc, dict) else None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


@dataclass(frozen=True, slots=True)
class TrailEvent:
    """One trail message that matters here: its trail sequence, its Sovereign, its envelope
    (None for an event of a type that does not count)."""

    seq: int
    sovereign: str
    envelope: EventEnvelope | None


def trail_event(prefix: str, seq: int, subject: str, data: bytes) -> TrailEvent | None:
    """The trail message at ``seq``, decoded when its type counts (:data:`COUNTED`); None for
    a subject that names no Sovereign."""
    sovereign = trail_sovereign(prefix, subject)
    if sovereign is None:
        return None
    envelope = decode_envelope(data) if event_type(data) in COUNTED else None
    return TrailEvent(seq, sovereign, envelope)


def redemption_row(
    sovereign: str, seq: int, at: datetime, event: VoucherRedeemed
) -> dict[str, Any]:
    """A ``sovereign_redemptions`` row as the redemption makes it."""
    return {
        "sovereign": sovereign,
        "code": event.code,
        "customer_id": event.customer_id,
        "redemption_id": event.redemption_id,
        "user_id": event.user_id,
        "credit_baisa": event.credit_baisa,
        "redeemed_at": at,
        "reversed_at": None,
        "trail_seq": seq,
        "reversed_trail_seq": None,
    }


@dataclass
class CodeFigures:
    """One Sovereign's figures for one code."""

    redemptions: int = 0  # standing
    reversed: int = 0
    credit_baisa: int = 0  # granted by the standing redemptions

    def as_dict(self) -> dict[str, int]:
        return {
            "redemptions": self.redemptions,
            "reversed": self.reversed,
            "credit_baisa": self.credit_baisa,
        }


@dataclass
class TrailFold:
    """The trail folded up to some sequence: what ``sovereign_redemptions`` and
    ``sovereign_trail_status`` must hold, and each Sovereign's releases per code."""

    redemptions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    released: dict[tuple[str, str], int] = field(default_factory=dict)  # (sovereign, code)

    def add(self, e: TrailEvent) -> None:
        self.last_seq[e.sovereign] = max(e.seq, self.last_seq.get(e.sovereign, 0))
        self.events[e.sovereign] += 1
        if e.envelope is None:
            return
        event, at = e.envelope.event, e.envelope.occurred_at
        if isinstance(event, VoucherRedeemed):
            key = (e.sovereign, event.redemption_id)
            if key not in self.redemptions:
                self.redemptions[key] = redemption_row(e.sovereign, e.seq, at, event)
        elif isinstance(event, RedemptionReversed):
            row = self.redemptions.get((e.sovereign, event.redemption_id))
            if row is not None and row["reversed_at"] is None:
                row["reversed_at"] = at
                row["reversed_trail_seq"] = e.seq
        elif isinstance(event, ShareReleased):
            key = (e.sovereign, event.code)
            self.released[key] = max(event.released_total, self.released.get(key, 0))

    def figures(self) -> dict[tuple[str, str], CodeFigures]:
        """Per (Sovereign, code): standing and reversed redemptions, credit granted."""
        return figures_of(self.redemptions.values())


def figures_of(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], CodeFigures]:
    """Per (Sovereign, code), from ``sovereign_redemptions`` rows (or the fold's)."""
    out: dict[tuple[str, str], CodeFigures] = {}
    for row in rows:
        figures = out.setdefault((row["sovereign"], row["code"]), CodeFigures())
        if row["reversed_at"] is None:
            figures.redemptions += 1
            figures.credit_baisa += int(row["credit_baisa"])
        else:
            figures.reversed += 1
    return out


@dataclass(frozen=True)
class ReportLine:
    sovereign: str
    code: str | None  # None: the Sovereign's totals
    redemptions: int
    reversed: int
    credit_baisa: int


def report_lines(
    figures: Mapping[tuple[str, str], CodeFigures], sovereigns: Iterable[str] = ()
) -> tuple[list[ReportLine], list[ReportLine]]:
    """The report: one line per Sovereign and code (by name, then code), and each Sovereign's
    totals (every Sovereign of ``sovereigns`` too, with zeros when it has no redemption)."""
    lines = [
        ReportLine(sov, code, f.redemptions, f.reversed, f.credit_baisa)
        for (sov, code), f in sorted(figures.items())
    ]
    names = sorted({sov for sov, _ in figures} | set(sovereigns))
    totals = []
    for name in names:
        mine = [f for (sov, _), f in figures.items() if sov == name]
        totals.append(
            ReportLine(
                name,
                None,
                sum(f.redemptions for f in mine),
                sum(f.reversed for f in mine),
                sum(f.credit_baisa for f in mine),
            )
        )
    return lines, totals


# ------------------------------------------------------------------ global codes' shares


@dataclass(frozen=True)
class Allotment:
    """What the hub's own stream says of a global code: its cap and what it gave each
    Sovereign (``allotted``: all slots ever given)."""

    cap: int
    allotted: Mapping[str, int]


class ShareWalk:
    """The trail's redemptions, reversals and releases of the global codes, in trail order,
    kept compactly until the hub's allotments are known (they are read after the trail: an
    allotment only ever grows, so every slot a redemption on the trail used is in them)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, str, str, str, str, int]] = []  # seq, sov, code, kind, …

    def add(self, e: TrailEvent) -> None:
        if e.envelope is None:
            return
        event = e.envelope.event
        if isinstance(event, VoucherRedeemed):
            self.steps.append((e.seq, e.sovereign, event.code, REDEEMED, event.redemption_id, 0))
        elif isinstance(event, RedemptionReversed):
            self.steps.append((e.seq, e.sovereign, event.code, REVERSED, event.redemption_id, 0))
        elif isinstance(event, ShareReleased):
            self.steps.append((e.seq, e.sovereign, event.code, RELEASED, "", event.released_total))
        elif isinstance(event, ShareReceived):
            self.steps.append((e.seq, e.sovereign, event.code, RECEIVED, "", 0))


def check_shares(walk: ShareWalk, allotments: Mapping[str, Allotment]) -> list[str]:
    """The global codes' invariants on the trail, at every step of it: for each Sovereign, its
    standing redemptions of a code never exceed what the hub allotted it less what it released
    (as the trail shows its releases up to that step), and the standing redemptions of all
    Sovereigns together never exceed the code's cap. A Sovereign's events of the code count
    from its first ``voucher.share_received`` of it on (before: a voucher of its own). One line
    per code and failure kind (the first step it happens at)."""
    taken: set[tuple[str, str]] = set()  # (code, sovereign): the code is a share there
    standing: dict[tuple[str, str], set[str]] = {}  # (code, sovereign) -> redemption ids
    released: dict[tuple[str, str], int] = {}
    total: Counter[str] = Counter()
    failed: dict[tuple[str, str], str] = {}  # (code, sovereign or "*") -> the first failure
    for seq, sov, code, kind, rid, released_total in walk.steps:
        share = allotments.get(code)
        if share is None:
            continue  # not a global code
        key = (code, sov)
        if kind == RECEIVED:
            taken.add(key)
            continue
        if key not in taken:
            continue  # the Sovereign's own voucher of that code
        ids = standing.setdefault(key, set())
        if kind == REDEEMED:
            if rid in ids:
                continue
            ids.add(rid)
            total[code] += 1
        elif kind == REVERSED:
            if rid in ids:
                ids.discard(rid)
                total[code] -= 1
            continue
        else:
            released[key] = max(released_total, released.get(key, 0))
        allotted = share.allotted.get(sov, 0)
        room = allotted - released.get(key, 0)
        if len(ids) > room and key not in failed:
            failed[key] = (
                f"global {code}: Sovereign {sov} has {len(ids)} standing redemption(s) at "
                f"trail seq {seq}, more than the {allotted} slot(s) the hub allotted it less "
                f"the {released.get(key, 0)} it released"
            )
        if total[code] > share.cap and (code, "*") not in failed:
            failed[(code, "*")] = (
                f"global {code}: the Sovereigns' standing redemptions together are "
                f"{total[code]} at trail seq {seq}, more than the cap {share.cap}"
            )
    return [failed[k] for k in sorted(failed)]
