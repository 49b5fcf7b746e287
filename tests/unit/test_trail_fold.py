"""The trail's fold, the report's totals and the global shares' check (``trail_fold.py``),
without servers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    RedemptionReversed,
    ShareReceived,
    ShareReleased,
    VoucherIssued,
    VoucherRedeemed,
    encode_envelope,
)
from voucher_ledger.projections.trail_fold import (
    Allotment,
    CodeFigures,
    ShareWalk,
    TrailEvent,
    TrailFold,
    check_shares,
    event_type,
    figures_of,
    report_lines,
    trail_event,
    trail_sovereign,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def env(code: str, event: Any, minute: int = 0) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate_id=code,
        occurred_at=T0 + timedelta(minutes=minute),
        actor=Actor(sub="t", role="service"),
        command_id="c",
        event=event,
    )


def redeem(code: str, rid: str, credit: int = 100) -> VoucherRedeemed:
    return VoucherRedeemed(
        code=code, customer_id=f"o-{rid}", redemption_id=rid, credit_baisa=credit, user_id="u"
    )


def reverse(code: str, rid: str) -> RedemptionReversed:
    return RedemptionReversed(code=code, customer_id=f"o-{rid}", redemption_id=rid, reason="r")


def release(code: str, total: int) -> ShareReleased:
    return ShareReleased(code=code, slots=1, released_total=total, answered_total=total)


def steps(*items: tuple[str, Any]) -> list[TrailEvent]:
    """Trail events at seq 1, 2, … : (sovereign, event or None)."""
    return [
        TrailEvent(seq, sov, env(getattr(e, "code", "X"), e, seq) if e is not None else None)
        for seq, (sov, e) in enumerate(items, 1)
    ]


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("ledger.sovereign.north.events.voucher.WELCOME", "north"),
        ("ledger.sovereign.s_2.events.wallet.acct", "s_2"),
        ("ledger.events.voucher.WELCOME", None),
        ("ledger.sovereign.north.commands.x", None),
        ("ledger.sovereign..events.voucher.X", None),
        ("other.sovereign.north.events.voucher.X", None),
    ],
)
def test_the_sovereign_of_a_trail_subject(subject: str, expected: str | None) -> None:
    assert trail_sovereign("ledger", subject) == expected


def test_only_the_counted_types_are_decoded_and_an_unknown_type_is_no_error() -> None:
    body = encode_envelope(env("W", redeem("W", "a")))
    assert event_type(body) == "voucher.redeemed"
    decoded = trail_event("ledger", 7, "ledger.sovereign.n.events.voucher.W", body)
    assert decoded is not None
    assert decoded.envelope is not None
    assert decoded.seq == 7
    issued = VoucherIssued(
        code="W", credit_baisa=1, description="d", active=True, max_redemptions=0, change="created"
    )
    skipped = trail_event(
        "ledger", 8, "ledger.sovereign.n.events.voucher.W", encode_envelope(env("W", issued))
    )
    assert skipped == TrailEvent(8, "n", None)
    future = b'{"event": {"type": "voucher.teleported", "version": 9}}'
    assert trail_event("ledger", 9, "ledger.sovereign.n.events.voucher.W", future) == TrailEvent(
        9, "n", None
    )
    assert event_type(b"not json") is None
    assert trail_event("ledger", 10, "ledger.events.voucher.W", body) is None


def test_the_fold_keeps_the_first_redemption_and_the_first_reversal() -> None:
    fold = TrailFold()
    for e in steps(
        ("n", redeem("W", "a", 100)),
        ("n", redeem("W", "a", 999)),  # the same redemption again: ignored
        ("s", redeem("W", "a", 50)),  # another Sovereign's id space
        ("n", reverse("W", "a")),
        ("n", reverse("W", "a")),  # a second reversal: ignored
        ("n", reverse("W", "zz")),  # a reversal of nothing: ignored
        ("n", None),
        ("n", release("W", 2)),
        ("n", release("W", 1)),  # an older total arriving late changes nothing
    ):
        fold.add(e)
    a = fold.redemptions[("n", "a")]
    assert (a["credit_baisa"], a["trail_seq"], a["reversed_trail_seq"]) == (100, 1, 4)
    assert a["reversed_at"] == T0 + timedelta(minutes=4)
    assert fold.redemptions[("s", "a")]["reversed_at"] is None
    assert sorted(fold.redemptions) == [("n", "a"), ("s", "a")]
    assert fold.last_seq == {"n": 9, "s": 3}
    assert fold.events == {"n": 8, "s": 1}
    assert fold.released == {("n", "W"): 2}
    assert {k: v.as_dict() for k, v in fold.figures().items()} == {
        ("n", "W"): {"redemptions": 0, "reversed": 1, "credit_baisa": 0},
        ("s", "W"): {"redemptions": 1, "reversed": 0, "credit_baisa": 50},
    }


def test_report_lines_sum_per_sovereign_and_name_every_listed_one() -> None:
    rows = [
        {"sovereign": "n", "code": "A", "credit_baisa": 100, "reversed_at": None},
        {"sovereign": "n", "code": "A", "credit_baisa": 100, "reversed_at": T0},
        {"sovereign": "n", "code": "B", "credit_baisa": 30, "reversed_at": None},
        {"sovereign": "s", "code": "A", "credit_baisa": 7, "reversed_at": None},
    ]
    figures = figures_of(rows)
    assert figures[("n", "A")] == CodeFigures(1, 1, 100)
    lines, totals = report_lines(figures, ["z", "n"])
    assert [(x.sovereign, x.code) for x in lines] == [("n", "A"), ("n", "B"), ("s", "A")]
    assert [(x.sovereign, x.code, x.redemptions, x.reversed, x.credit_baisa) for x in totals] == [
        ("n", None, 2, 1, 130),
        ("s", None, 1, 0, 7),
        ("z", None, 0, 0, 0),
    ]
    assert report_lines({}) == ([], [])


def got(code: str) -> ShareReceived:
    return ShareReceived(
        code=code, allotted_total=2, requested_total=0, pool_empty=False, hub_seq=1
    )


def walk_of(*items: tuple[str, Any]) -> ShareWalk:
    """The walk of ``items`` after both Sovereigns received their share of G (seq 1 and 2:
    the items are at seq 3, 4, …)."""
    walk = ShareWalk()
    for e in steps(("n", got("G")), ("s", got("G")), *items):
        walk.add(e)
    return walk


SHARES = {"G": Allotment(cap=4, allotted={"n": 2, "s": 2})}


def test_redemptions_within_the_shares_pass() -> None:
    walk = walk_of(
        ("n", redeem("G", "a")),
        ("n", redeem("G", "b")),
        ("n", reverse("G", "b")),  # frees its slot
        ("n", redeem("G", "c")),
        ("s", redeem("G", "d")),
        ("s", redeem("G", "e")),
        ("s", redeem("L", "x")),  # not a global code
        ("s", redeem("L", "y")),
        ("s", redeem("L", "z")),
    )
    assert check_shares(walk, SHARES) == []


def test_a_sovereign_past_its_share_fails_once_at_the_first_step() -> None:
    walk = walk_of(
        ("n", redeem("G", "a")),
        ("n", redeem("G", "b")),
        ("n", redeem("G", "c")),  # 3 > 2
        ("n", redeem("G", "d")),
    )
    assert check_shares(walk, SHARES) == [
        "global G: Sovereign n has 3 standing redemption(s) at trail seq 5, more than the 2 "
        "slot(s) the hub allotted it less the 0 it released"
    ]


def test_a_release_takes_its_slots_out_of_the_sovereigns_room() -> None:
    ok = walk_of(("n", redeem("G", "a")), ("n", release("G", 1)))
    assert check_shares(ok, SHARES) == []
    late = walk_of(("n", release("G", 1)), ("n", redeem("G", "a")), ("n", redeem("G", "b")))
    assert check_shares(late, SHARES) == [
        "global G: Sovereign n has 2 standing redemption(s) at trail seq 5, more than the 2 "
        "slot(s) the hub allotted it less the 1 it released"
    ]
    # releasing slots it had already used is caught at the release
    spent = walk_of(("n", redeem("G", "a")), ("n", redeem("G", "b")), ("n", release("G", 1)))
    assert check_shares(spent, SHARES)[0].startswith(
        "global G: Sovereign n has 2 standing redemption(s) at trail seq 5"
    )


def test_a_sovereign_never_allotted_has_no_room() -> None:
    walk = walk_of(("e", got("G")), ("e", redeem("G", "a")))
    assert check_shares(walk, SHARES) == [
        "global G: Sovereign e has 1 standing redemption(s) at trail seq 4, more than the 0 "
        "slot(s) the hub allotted it less the 0 it released"
    ]


def test_a_sovereigns_own_voucher_of_the_code_counts_from_no_share() -> None:
    # Before its share arrived (or without one: it refused the global code because a voucher
    # of its own has that code) a Sovereign's redemptions of the code are its own voucher's.
    walk = ShareWalk()
    for e in steps(
        ("e", redeem("G", "a")),
        ("e", redeem("G", "b")),
        ("e", redeem("G", "c")),
        ("n", redeem("G", "d")),
        ("n", got("G")),
        ("n", reverse("G", "d")),  # a reversal of a redemption that never counted: nothing
        ("n", redeem("G", "f")),
        ("n", redeem("G", "g")),
    ):
        walk.add(e)
    assert check_shares(walk, SHARES) == []
    walk.add(TrailEvent(9, "n", env("G", redeem("G", "h"), 9)))
    assert check_shares(walk, SHARES) == [
        "global G: Sovereign n has 3 standing redemption(s) at trail seq 9, more than the 2 "
        "slot(s) the hub allotted it less the 0 it released"
    ]


def test_the_sovereigns_together_past_the_cap_fail() -> None:
    shares = {"G": Allotment(cap=3, allotted={"n": 2, "s": 2})}
    walk = walk_of(
        ("n", redeem("G", "a")),
        ("s", redeem("G", "b")),
        ("n", redeem("G", "c")),
        ("s", reverse("G", "b")),
        ("s", redeem("G", "d")),  # 3: at the cap
        ("s", redeem("G", "e")),  # 4 > 3
    )
    assert check_shares(walk, shares) == [
        "global G: the Sovereigns' standing redemptions together are 4 at trail seq 8, more "
        "than the cap 3"
    ]
