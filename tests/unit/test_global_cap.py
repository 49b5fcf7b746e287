"""A global voucher's cap with the real deciders (issue #22): ``ledger/global_voucher.py`` at
the hub, ``ledger/voucher.py`` on each Sovereign, over links that are cut, late and repeated.

The two message flows of the wiring are modelled as streams of recorded events:

* hub -> Sovereign: the hub's ``global.*`` events are copied (sourced) to each Sovereign, in
  order, only while its link is up; a worker there folds them and sends ``ReceiveGlobal`` with
  that Sovereign's figures and the position (``hub_seq``) to the code's voucher aggregate.
* Sovereign -> hub: each Sovereign's events are copied to the hub's trail, in order, only while
  its link is up; the hub's allocator folds them per Sovereign and sends ``ObserveSovereign``
  with the trail position (``trail_seq``) to the hub's aggregate.

A worker or the allocator restarts at random and re-reads its whole inbox from the start
(duplicates). Customers redeem, some redemptions are reversed, the operator recalls and may
revoke. After every step: the Sovereigns' standing redemptions together never exceed the cap,
and none holds more than it received and did not release. After a final heal, with the
customers still trying, the cap is used exactly when demand exceeds it (no slot lost) and the
hub's view equals the Sovereigns' own figures.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from voucher_ledger.ledger import global_voucher, voucher
from voucher_ledger.ledger.commands import (
    IssueGlobal,
    IssueVoucher,
    ObserveSovereign,
    RecallShare,
    ReceiveGlobal,
    RedeemVoucher,
    ReverseRedemption,
    RevokeGlobal,
    RevokeVoucher,
    WantShare,
)
from voucher_ledger.ledger.errors import (
    CapReached,
    InvalidInput,
    ShareExhausted,
    VoucherInactive,
    VoucherNotFound,
)
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    GlobalIssued,
    GlobalObserved,
    GlobalRecallRequested,
    GlobalRevoked,
    GlobalShareAllotted,
    RecordedEvent,
    RedemptionReversed,
    ShareReleased,
    ShareWanted,
    VoucherRedeemed,
)
from voucher_ledger.ledger.voucher import Decided, Policy, Refused, Replayed

CODE = "GLOBAL100"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = Policy()
HUB_ACTOR = Actor(sub="hub", role="superadmin")


def recorded(seq: int, event: object, command_id: str, aggregate: str, fp: str) -> RecordedEvent:
    """As the store records it (built without re-validating the decided event: speed)."""
    return RecordedEvent.model_construct(
        seq=seq,
        envelope=EventEnvelope.model_construct(
            event_id=f"{aggregate}-{seq}",
            aggregate=aggregate,  # type: ignore[arg-type]
            aggregate_id=CODE,
            occurred_at=T0 + timedelta(seconds=seq),
            actor=HUB_ACTOR,
            command_id=command_id,
            command_fingerprint=fp,
            event=event,  # type: ignore[arg-type]
        ),
    )


def terms(cap: int) -> IssueVoucher:
    return IssueVoucher(code=CODE, credit_baisa=500, max_redemptions=cap)


# ------------------------------------------------------------------------------------ the hub


@dataclass
class Hub:
    """The hub's aggregate for the code and its stream of global events."""

    state: global_voucher.GlobalState = field(
        default_factory=lambda: global_voucher.initial_state(CODE)
    )
    log: list[RecordedEvent] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def send(
        self, command: global_voucher.GlobalCommandT, command_id: str | None = None
    ) -> global_voucher.Outcome:
        cid = command_id or f"hub-cmd-{next(self.ids)}"
        outcome = global_voucher.handle(self.state, command, cid, POLICY)
        if isinstance(outcome, Decided):
            for event in outcome.events:
                rec = recorded(len(self.log) + 1, event, cid, "global", command.fingerprint())
                self.log.append(rec)
                self.state = global_voucher.evolve(self.state, rec, command.fingerprint())
        return outcome


@dataclass
class Allocator:
    """At the hub: reads the trail in order, folds each Sovereign's events of the code."""

    cursor: int = 0
    redeemed: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    answered: dict[str, int] = field(default_factory=dict)
    wanted: dict[str, int] = field(default_factory=dict)

    def restart(self) -> None:
        self.cursor = 0
        self.redeemed.clear()
        self.released.clear()
        self.answered.clear()
        self.wanted.clear()

    def step(self, trail: list[tuple[str, RecordedEvent]], hub: Hub, stable_ids: bool) -> bool:
        if self.cursor >= len(trail):
            return False
        name, rec = trail[self.cursor]
        self.cursor += 1
        trail_seq = self.cursor
        event = rec.envelope.event
        if isinstance(event, VoucherRedeemed):
            self.redeemed[name] = self.redeemed.get(name, 0) + 1
        elif isinstance(event, RedemptionReversed):
            self.redeemed[name] = self.redeemed.get(name, 0) - 1
        elif isinstance(event, ShareReleased):
            self.released[name] = event.released_total
            self.answered[name] = event.answered_total
        elif isinstance(event, ShareWanted):
            self.wanted[name] = event.wanted_total
        command = ObserveSovereign(
            code=CODE,
            sovereign=name,
            trail_seq=trail_seq,
            redeemed=self.redeemed.get(name, 0),
            released_total=self.released.get(name, 0),
            answered_total=self.answered.get(name, 0),
            wanted_total=self.wanted.get(name, 0),
        )
        outcome = hub.send(command, f"observe-{name}-{trail_seq}" if stable_ids else None)
        assert not isinstance(outcome, Refused), outcome.error
        return True


# ---------------------------------------------------------------------------- the Sovereigns


@dataclass
class Sovereign:
    name: str
    state: voucher.VoucherState = field(default_factory=lambda: voucher.initial_state(CODE))
    log: list[RecordedEvent] = field(default_factory=list)
    copy: list[RecordedEvent] = field(default_factory=list)  # its copy of the hub's events
    sent: int = 0  # how many of its own events reached the hub's trail
    # the share worker: a cursor into ``copy`` and the figures folded so far
    cursor: int = 0
    definition: GlobalIssued | None = None
    allotted: int = 0
    requested: int = 0
    revoked: bool = False
    pool: int | None = None
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, command: voucher.VoucherCommandT, command_id: str | None = None) -> object:
        cid = command_id or f"{self.name}-cmd-{next(self.ids)}"
        outcome = voucher.handle(self.state, command, cid, POLICY, T0)
        if isinstance(outcome, Decided):
            for event in outcome.events:
                rec = recorded(len(self.log) + 1, event, cid, "voucher", command.fingerprint())
                self.log.append(rec)
                self.state = voucher.evolve(self.state, rec, command.fingerprint())
        return outcome

    @property
    def standing(self) -> int:
        return self.state.times_redeemed

    @property
    def received(self) -> int:
        return self.state.share.received if self.state.share else 0

    @property
    def released(self) -> int:
        return self.state.share.released if self.state.share else 0

    def restart_worker(self) -> None:
        self.cursor = 0
        self.definition = None
        self.allotted = self.requested = 0
        self.revoked = False
        self.pool = None

    def work(self, stable_ids: bool) -> bool:
        """The share worker takes the next hub event of its copy."""
        if self.cursor >= len(self.copy):
            return False
        rec = self.copy[self.cursor]
        self.cursor += 1
        event = rec.envelope.event
        match event:
            case GlobalIssued():
                self.definition = event
            case GlobalShareAllotted():
                self.pool = event.pool
                if event.sovereign == self.name:
                    self.allotted = event.allotted_total
            case GlobalObserved():
                self.pool = event.pool
            case GlobalRecallRequested():
                if event.sovereign == self.name:
                    self.requested = event.requested_total
            case GlobalRevoked():
                self.revoked = True
        if self.definition is None:
            return True
        command = ReceiveGlobal(
            code=CODE,
            definition=self.definition,
            allotted_total=self.allotted,
            requested_total=self.requested,
            revoked=self.revoked,
            pool_empty=self.pool == 0,
            hub_seq=rec.seq,
        )
        outcome = self.send(command, f"receive-{rec.seq}" if stable_ids else None)
        assert not isinstance(outcome, Refused), outcome.error
        return True


def wants_share(error: Exception) -> bool:
    """As the checkout decides it: refused for want of slots on this Sovereign (its share is
    used up; with the hub's pool last seen empty the refusal reads cap_reached, with the share
    in its details)."""
    return isinstance(error, ShareExhausted) or (
        isinstance(error, CapReached) and "share" in error.context
    )


# -------------------------------------------------------------------------------- the world


@dataclass
class World:
    rng: random.Random
    cap: int
    hub: Hub
    sovs: dict[str, Sovereign]
    customers: dict[str, str]  # customer -> its Sovereign
    stable_ids: bool
    trail: list[tuple[str, RecordedEvent]] = field(default_factory=list)
    allocator: Allocator = field(default_factory=Allocator)
    cut: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)  # customers holding a standing redemption
    by_sov: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def start(cls, seed: int) -> World:
        rng = random.Random(seed)
        cap = rng.choice([1, 3, 10, 40, 100, 150, 299, 300, 320])
        names = ["north", "south", "east"][: rng.choice([2, 3])]
        named = names if rng.random() < 0.7 else names[:-1]  # one may get its share late
        customers = {f"c{i:03d}": rng.choice(names) for i in range(300)}
        world = cls(
            rng=rng,
            cap=cap,
            hub=Hub(),
            sovs={n: Sovereign(n) for n in names},
            customers=customers,
            stable_ids=rng.random() < 0.5,
        )
        world.by_sov = {n: [c for c, s in customers.items() if s == n] for n in names}
        issued = world.hub.send(IssueGlobal(code=CODE, terms=terms(cap), sovereigns=named))
        assert isinstance(issued, Decided)
        return world

    # the links
    def source_down(self, name: str) -> bool:
        """Copy the next hub event(s) to the Sovereign, if its link is up."""
        sov = self.sovs[name]
        if name in self.cut or len(sov.copy) >= len(self.hub.log):
            return False
        k = self.rng.randint(1, 3)
        sov.copy.extend(self.hub.log[len(sov.copy) : len(sov.copy) + k])
        return True

    def source_up(self, name: str) -> bool:
        """Copy the Sovereign's next event(s) to the hub's trail, if its link is up."""
        sov = self.sovs[name]
        if name in self.cut or sov.sent >= len(sov.log):
            return False
        k = self.rng.randint(1, 3)
        for rec in sov.log[sov.sent : sov.sent + k]:
            self.trail.append((name, rec))
        sov.sent = min(len(sov.log), sov.sent + k)
        return True

    def waiting(self, name: str) -> list[str]:
        """The customers of ``name`` without a standing redemption."""
        return [c for c in self.by_sov[name] if c not in self.done]

    # the actors
    def redeem(self, customer: str) -> bool:
        sov = self.sovs[self.customers[customer]]
        outcome = sov.send(RedeemVoucher(code=CODE, customer_id=customer))
        if isinstance(outcome, Decided):
            self.done.add(customer)
            return True
        assert isinstance(outcome, Refused)
        assert isinstance(
            outcome.error, ShareExhausted | CapReached | VoucherNotFound | VoucherInactive
        ), outcome.error
        if wants_share(outcome.error):
            # As the checkout does: the Sovereign says it wants slots (once per exhaustion).
            wanted = sov.send(WantShare(code=CODE))
            assert isinstance(wanted, Decided), wanted
        return False

    def reverse(self, customer: str) -> None:
        sov = self.sovs[self.customers[customer]]
        outcome = sov.send(ReverseRedemption(code=CODE, customer_id=customer))
        assert isinstance(outcome, Decided), outcome
        self.done.discard(customer)

    def check(self, seed: int, step: int) -> None:
        where = f"seed {seed}, step {step}"
        total = sum(s.standing for s in self.sovs.values())
        assert total <= self.cap, f"{where}: {total} standing redemptions over the cap {self.cap}"
        assert self.hub.state.pool >= 0, where
        for sov in self.sovs.values():
            assert sov.standing <= sov.received - sov.released, (
                f"{where}: {sov.name} holds {sov.standing} redemptions, received "
                f"{sov.received}, released {sov.released}"
            )
            assert sov.received <= self.hub.state.part(sov.name).allotted, where

    def heal_and_drain(self, seed: int, step: int) -> None:
        self.cut.clear()
        for _ in range(100_000):
            moved = False
            for name, sov in self.sovs.items():
                moved |= self.source_down(name)
                while sov.work(self.stable_ids):
                    moved = True
                moved |= self.source_up(name)
            while self.allocator.step(self.trail, self.hub, self.stable_ids):
                moved = True
            self.check(seed, step)
            if not moved:
                return
        raise AssertionError(f"seed {seed}: the links never drained")


def run(seed: int) -> Outcome:
    world = World.start(seed)
    rng = world.rng
    names = list(world.sovs)
    revoke_at = rng.randint(0, 900) if rng.random() < 0.15 else -1
    steps = rng.randint(200, 900)
    for step in range(steps):
        name = rng.choice(names)
        roll = rng.random()
        if step == revoke_at:
            world.hub.send(RevokeGlobal(code=CODE))
        elif roll < 0.35:
            waiting = world.waiting(name)
            if waiting:
                world.redeem(rng.choice(waiting))
        elif roll < 0.45:
            world.source_down(name)
        elif roll < 0.55:
            for _ in range(rng.randint(1, 4)):
                world.sovs[name].work(world.stable_ids)
        elif roll < 0.65:
            world.source_up(name)
        elif roll < 0.75:
            for _ in range(rng.randint(1, 6)):
                world.allocator.step(world.trail, world.hub, world.stable_ids)
        elif roll < 0.81:
            world.cut.add(name)
        elif roll < 0.87:
            world.cut.discard(name)
        elif roll < 0.89:
            world.sovs[name].restart_worker()
        elif roll < 0.91:
            world.allocator.restart()
        elif roll < 0.93:
            if world.hub.state.part(name).allotted > 0:
                slots = rng.randint(1, max(1, world.cap // 4))
                outcome = world.hub.send(RecallShare(code=CODE, sovereign=name, slots=slots))
                assert isinstance(outcome, Decided) or world.hub.state.revoked, outcome
        elif roll < 0.96:
            held = [c for c in world.done if world.customers[c] == name]
            if held:
                world.reverse(rng.choice(sorted(held)))
        world.check(seed, step)
    # The final heal: every link up and drained, the customers still waiting keep trying.
    revoked = world.hub.state.revoked
    for _round in range(10_000):
        world.heal_and_drain(seed, steps)
        progressed = False
        for name in world.sovs:
            for customer in world.waiting(name):  # until one is refused: the rest would be
                if not world.redeem(customer):
                    break
                progressed = True
        world.check(seed, steps)
        if not progressed and not any(
            s.sent < len(s.log) or len(s.copy) < len(world.hub.log) for s in world.sovs.values()
        ):
            break
    world.heal_and_drain(seed, steps)
    total = sum(s.standing for s in world.sovs.values())
    view = world.hub.state.view()
    assert view.redeemed == total, f"seed {seed}"
    for part in view.sovereigns:
        sov = world.sovs[part.sovereign]
        assert (part.redeemed, part.released, part.allotted) == (
            sov.standing,
            sov.released,
            sov.received,
        ), f"seed {seed}: the hub's view of {sov.name} differs from its own figures"
    assert {p.sovereign for p in view.sovereigns} <= set(world.sovs)
    if revoked:
        for sov in world.sovs.values():
            if sov.state.share is not None:
                assert sov.received - sov.released == sov.standing, f"seed {seed}: {sov.name}"
    return Outcome(total, world.cap, len(world.customers), revoked, describe(world))


@dataclass(frozen=True)
class Outcome:
    total: int
    cap: int
    demand: int
    revoked: bool
    text: str


_RUNS: dict[int, Outcome] = {}


def run_once(seed: int) -> Outcome:
    """Each seed simulated once for the two tests below."""
    if seed not in _RUNS:
        _RUNS[seed] = run(seed)
    return _RUNS[seed]


def describe(world: World) -> str:
    parts = [f"pool {world.hub.state.pool}"]
    for sov in world.sovs.values():
        waiting = len(world.waiting(sov.name))
        parts.append(
            f"{sov.name}: received {sov.received} released {sov.released} "
            f"standing {sov.standing} waiting {waiting}"
        )
    return "; ".join(parts)


@pytest.mark.parametrize("seed", range(300))
def test_the_real_deciders_hold_the_global_cap_whatever_the_links_do(seed: int) -> None:
    """Safety after every step, and the hub's view equal to the Sovereigns' in the end."""
    run_once(seed)


@pytest.mark.parametrize("seed", range(300))
def test_after_the_heal_the_customers_still_trying_use_the_cap_exactly(seed: int) -> None:
    out = run_once(seed)
    if out.revoked:
        assert out.total <= out.cap
        return
    assert out.total == min(out.cap, out.demand), (
        f"seed {seed}: {out.total} redemptions in the end, cap {out.cap}: slots were lost "
        f"({out.text})"
    )


# The allocation policy's former gap: a customer refused on an exhausted Sovereign left no
# event, so a Sovereign left with no unused slot by a recall, whose customers came only
# afterwards, was never known to want slots while the ones it gave sat unused on a Sovereign
# whose customers were done. The seed (beyond the 300 above) that showed it: with the demand
# signal (WantShare, ``voucher.share_wanted``) the cap is used.
@pytest.mark.parametrize("seed", [1638])
def test_a_sovereign_drained_by_a_recall_before_its_customers_came_gets_slots_back(
    seed: int,
) -> None:
    out = run(seed)
    assert out.total == min(out.cap, out.demand), out.text


# ---------------------------------------------------------------------------- targeted cases


def issued(cap: int = 100, sovereigns: tuple[str, ...] = ("north", "south")) -> Hub:
    hub = Hub()
    out = hub.send(IssueGlobal(code=CODE, terms=terms(cap), sovereigns=list(sovereigns)))
    assert isinstance(out, Decided)
    return hub


def definition(hub: Hub) -> GlobalIssued:
    assert hub.state.issued is not None
    return hub.state.issued


def receive(sov: Sovereign, hub: Hub, hub_seq: int, **figures: object) -> object:
    fields: dict[str, object] = {
        "allotted_total": 0,
        "requested_total": 0,
        "revoked": False,
        "pool_empty": False,
    }
    fields.update(figures)
    return sov.send(
        ReceiveGlobal(code=CODE, definition=definition(hub), hub_seq=hub_seq, **fields)  # type: ignore[arg-type]
    )


def events_of(outcome: object) -> list[object]:
    assert isinstance(outcome, Decided), outcome
    return list(outcome.events)


def refused(outcome: object) -> Exception:
    assert isinstance(outcome, Refused), outcome
    return outcome.error


def observe(hub: Hub, name: str, trail_seq: int, redeemed: int = 0, **rest: int) -> object:
    return hub.send(
        ObserveSovereign(
            code=CODE,
            sovereign=name,
            trail_seq=trail_seq,
            redeemed=redeemed,
            released_total=rest.get("released_total", 0),
            answered_total=rest.get("answered_total", 0),
            wanted_total=rest.get("wanted_total", 0),
        )
    )


def test_a_recall_is_answered_once_a_second_delivery_releases_nothing_more() -> None:
    hub = issued()
    north = Sovereign("north")
    receive(north, hub, 2, allotted_total=25)
    answer = events_of(receive(north, hub, 5, allotted_total=25, requested_total=10))
    released = [e for e in answer if isinstance(e, ShareReleased)]
    assert [(e.slots, e.released_total, e.answered_total) for e in released] == [(10, 10, 10)]
    # The same figures again, under a new position or a new command id: nothing more.
    assert events_of(receive(north, hub, 6, allotted_total=25, requested_total=10)) == []
    assert events_of(receive(north, hub, 5, allotted_total=25, requested_total=10)) == []
    assert isinstance(
        north.send(
            ReceiveGlobal(
                code=CODE,
                definition=definition(hub),
                allotted_total=25,
                requested_total=10,
                revoked=False,
                pool_empty=False,
                hub_seq=9,
            ),
            command_id=north.log[-1].envelope.command_id,  # a re-delivered command id
        ),
        Replayed,
    )
    assert (north.received, north.released) == (25, 10)
    # A recall larger than what is unused gets what is unused, and is answered once too.
    for i in range(12):
        north.send(RedeemVoucher(code=CODE, customer_id=f"c{i}"))
    answer = events_of(receive(north, hub, 7, allotted_total=25, requested_total=30))
    assert [(e.slots, e.answered_total) for e in answer if isinstance(e, ShareReleased)] == [
        (3, 30)
    ]
    assert events_of(receive(north, hub, 8, allotted_total=25, requested_total=30)) == []
    assert (north.standing, north.released) == (12, 13)


def test_revocation_releases_every_unused_slot_and_stops_redemptions() -> None:
    hub = issued()
    north = Sovereign("north")
    receive(north, hub, 2, allotted_total=25)
    for i in range(7):
        north.send(RedeemVoucher(code=CODE, customer_id=f"c{i}"))
    out = events_of(receive(north, hub, 4, allotted_total=25, revoked=True))
    assert [type(e).__name__ for e in out] == ["VoucherRevoked", "ShareReleased"]
    assert (north.released, north.standing, north.received) == (18, 7, 25)
    assert isinstance(
        refused(north.send(RedeemVoucher(code=CODE, customer_id="late"))), (VoucherNotFound)
    )
    # A later top-up figure after the revocation is given straight back.
    out = events_of(receive(north, hub, 6, allotted_total=30, revoked=True))
    assert [(e.slots, e.released_total) for e in out if isinstance(e, ShareReleased)] == [(5, 23)]
    # At the hub: revoked, it allots nothing more, whatever it observes.
    assert isinstance(hub.send(RevokeGlobal(code=CODE)), Decided)
    assert events_of(hub.send(RevokeGlobal(code=CODE))) == []
    out = events_of(observe(hub, "north", 3, redeemed=7, released_total=18, answered_total=0))
    assert [type(e).__name__ for e in out] == ["GlobalObserved"]
    assert hub.state.pool == 100 - 25 - 25 + 18
    assert isinstance(
        refused(hub.send(RecallShare(code=CODE, sovereign="south", slots=1))), (VoucherInactive)
    )


def test_receive_global_for_a_code_that_is_a_local_voucher_is_refused() -> None:
    hub = issued()
    north = Sovereign("north")
    assert isinstance(north.send(IssueVoucher(code=CODE, credit_baisa=100)), Decided)
    error = refused(receive(north, hub, 2, allotted_total=25))
    assert isinstance(error, InvalidInput)
    assert north.state.share is None
    assert len(north.log) == 1


def test_issue_and_revoke_voucher_on_a_global_code_are_refused() -> None:
    hub = issued()
    north = Sovereign("north")
    receive(north, hub, 2, allotted_total=25)
    before = len(north.log)
    assert isinstance(refused(north.send(IssueVoucher(code=CODE, credit_baisa=1))), InvalidInput)
    assert isinstance(refused(north.send(RevokeVoucher(code=CODE))), InvalidInput)
    assert len(north.log) == before
    assert not north.state.revoked


def test_an_exhausted_share_is_share_exhausted_unless_the_pool_is_empty_then_cap_reached() -> None:
    hub = issued(cap=10)
    north = Sovereign("north")
    receive(north, hub, 2, allotted_total=2)
    for i in range(2):
        assert isinstance(north.send(RedeemVoucher(code=CODE, customer_id=f"c{i}")), Decided)
    error = refused(north.send(RedeemVoucher(code=CODE, customer_id="c2")))
    assert isinstance(error, ShareExhausted)
    assert error.reason == "share_exhausted"
    receive(north, hub, 3, allotted_total=2, pool_empty=True)
    error = refused(north.send(RedeemVoucher(code=CODE, customer_id="c2")))
    assert isinstance(error, CapReached)
    assert error.reason == "cap_reached"
    # A top-up (the pool had slots after all) redeems again.
    receive(north, hub, 4, allotted_total=3, pool_empty=False)
    assert isinstance(north.send(RedeemVoucher(code=CODE, customer_id="c2")), Decided)
    # A late, older figure changes nothing.
    assert events_of(receive(north, hub, 3, allotted_total=2, pool_empty=True)) == []
    assert north.received == 3


def test_observe_sovereign_with_an_old_trail_seq_changes_nothing() -> None:
    hub = issued()
    assert len(events_of(observe(hub, "north", 5, redeemed=3))) == 1
    state = hub.state
    for seq in (5, 4, 1):
        assert events_of(observe(hub, "north", seq, redeemed=20, released_total=25)) == []
    assert hub.state == state
    assert hub.state.part("north").redeemed == 3
    # A release above what was ever allotted is refused, not recorded.
    error = refused(observe(hub, "north", 6, redeemed=3, released_total=26))
    assert isinstance(error, InvalidInput)


def test_issue_allots_share_of_to_each_named_sovereign_and_keeps_the_rest() -> None:
    assert global_voucher.share_of(100, 2) == 25
    assert global_voucher.share_of(100, 3) == 16
    assert global_voucher.share_of(1, 3) == 1
    assert global_voucher.low_water(25) == 6
    assert global_voucher.low_water(3) == 1
    hub = issued(cap=100, sovereigns=("north", "south"))
    view = hub.state.view()
    assert [(p.sovereign, p.allotted) for p in view.sovereigns] == [("north", 25), ("south", 25)]
    assert (view.pool, view.share) == (50, 25)
    tiny = issued(cap=1, sovereigns=("north", "south", "east"))
    assert [(p.sovereign, p.allotted) for p in tiny.state.view().sovereigns] == [("north", 1)]
    assert tiny.state.pool == 0


def test_top_up_by_share_once_a_redemption_takes_unused_to_low_water() -> None:
    hub = issued()  # share 25, low water 6
    # 18 redeemed: 7 unused, above the low-water mark: nothing.
    assert [type(e).__name__ for e in events_of(observe(hub, "north", 1, redeemed=18))] == [
        "GlobalObserved"
    ]
    out = events_of(observe(hub, "north", 2, redeemed=19))  # 6 unused: topped up
    allotted = [e for e in out if isinstance(e, GlobalShareAllotted)]
    assert [(e.sovereign, e.slots, e.allotted_total, e.pool) for e in allotted] == [
        ("north", 25, 50, 25)
    ]
    assert not hub.state.part("north").wanting
    # A Sovereign not named at issue gets its share once its record reaches the trail.
    out = events_of(observe(hub, "east", 3))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)] == [
        ("east", 25)
    ]
    assert hub.state.pool == 0


def test_with_the_pool_empty_a_wanting_sovereign_recalls_half_the_others_unused() -> None:
    hub = issued(cap=40)  # share 10 each, pool 20, low water 2
    observe(hub, "north", 1, redeemed=8)  # 2 unused: topped up to 20 (pool 10)
    observe(hub, "south", 2, redeemed=8)  # south topped up too (pool 0)
    observe(hub, "south", 3, redeemed=15)  # 5 unused: not low
    assert hub.state.pool == 0
    out = events_of(observe(hub, "north", 4, redeemed=19))  # 1 unused, nothing in the pool
    assert hub.state.part("north").wanting
    recalls = [e for e in out if isinstance(e, GlobalRecallRequested)]
    # south: 20 allotted, 15 redeemed: 5 unused, half (rounded down: north has 1) asked back.
    assert [(e.sovereign, e.slots, e.requested_total) for e in recalls] == [("south", 2, 2)]
    # While that recall is unanswered, another want asks south nothing more.
    out = events_of(observe(hub, "north", 5, redeemed=20))
    assert not [e for e in out if isinstance(e, GlobalRecallRequested)]
    # South answers with 2: they go to north, which wants, not back to south, though south
    # is now at its low-water mark (it did not redeem: no want of its own).
    out = events_of(observe(hub, "south", 6, redeemed=15, released_total=2, answered_total=2))
    allotted = [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)]
    assert allotted == [("north", 2)]
    assert not hub.state.part("south").wanting
    assert not hub.state.part("north").wanting
    assert hub.state.pool == 0
    # north redeems 1 of its 2 (1 left, wants again): of south's 3 unused, half rounded
    # down is asked back (a Sovereign keeps its last slot while nobody has none left).
    out = events_of(observe(hub, "north", 7, redeemed=21))
    recalls = [e for e in out if isinstance(e, GlobalRecallRequested)]
    assert [(e.sovereign, e.slots, e.requested_total) for e in recalls] == [("south", 1, 3)]
    # south had used 2 meanwhile and gives 1: it is left with none and wants (it redeemed),
    # so the slot goes to it first; north, 1 left, still wants.
    out = events_of(observe(hub, "south", 8, redeemed=17, released_total=3, answered_total=3))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)] == [
        ("south", 1)
    ]
    assert hub.state.part("north").wanting
    # north uses its last: none left, so south's last slot is asked for too (rounded up).
    out = events_of(observe(hub, "north", 9, redeemed=22))
    recalls = [e for e in out if isinstance(e, GlobalRecallRequested)]
    assert [(e.sovereign, e.slots, e.requested_total) for e in recalls] == [("south", 1, 4)]


def test_a_wanting_sovereign_with_none_left_recalls_from_one_that_wants_but_holds_some() -> None:
    hub = issued(cap=40)  # share 10 each, pool 20, low water 2
    observe(hub, "north", 1, redeemed=8)  # north low: topped up to 20 (pool 10)
    observe(hub, "south", 2, redeemed=8)  # south too: 20 (pool 0)
    out = events_of(observe(hub, "north", 3, redeemed=18))  # 2 left: wants, pool empty
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalRecallRequested)] == [
        ("south", 6)
    ]
    # south redeems down to 2 before the recall reaches it: it wants too; nobody is asked.
    out = events_of(observe(hub, "south", 4, redeemed=18))
    assert not [e for e in out if isinstance(e, GlobalRecallRequested)]
    # It uses its last two and answers the recall with nothing: it has none left, so north,
    # wanting but holding 2 (its customers may be done), is asked for 1.
    out = events_of(observe(hub, "south", 5, redeemed=20, answered_total=6))
    assert hub.state.part("north").wanting
    assert hub.state.part("south").wanting
    recalls = [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalRecallRequested)]
    assert recalls == [("north", 1)]
    # north answers: the slot goes to south (none left) first.
    out = events_of(observe(hub, "north", 6, redeemed=18, released_total=1, answered_total=1))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)] == [
        ("south", 1)
    ]
    assert hub.state.part("north").wanting  # still: 1 left, nothing in the pool


def test_the_sovereign_answering_a_recall_is_topped_up_only_when_nobody_else_wants() -> None:
    hub = issued(cap=40)
    assert isinstance(hub.send(RecallShare(code=CODE, sovereign="south", slots=9)), Decided)
    # south gave 9 of its 10 back, redeemed nothing: 1 unused, low, but it wants nothing; as
    # nobody else does either, the pool (29) tops the lowest up: south gets its share again.
    out = events_of(observe(hub, "south", 1, released_total=9, answered_total=9))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)] == [
        ("south", 10)
    ]
    assert hub.state.pool == 19


# ----------------------------------------------------------- the demand signal (WantShare)


def want(sov: Sovereign, command_id: str | None = None) -> list[object]:
    return events_of(sov.send(WantShare(code=CODE), command_id))


def test_want_share_is_recorded_once_per_exhaustion_and_only_for_a_used_up_share() -> None:
    hub = issued(cap=10)
    north = Sovereign("north")
    # Not a voucher here yet, then a voucher of this Sovereign's own: refused, nothing written.
    assert isinstance(refused(north.send(WantShare(code=CODE))), VoucherNotFound)
    local = Sovereign("north")
    assert isinstance(local.send(IssueVoucher(code=CODE, credit_baisa=100)), Decided)
    assert isinstance(refused(local.send(WantShare(code=CODE))), InvalidInput)
    assert len(local.log) == 1
    receive(north, hub, 2, allotted_total=2)
    assert want(north) == []  # 2 unused: no want
    for i in range(2):
        assert isinstance(north.send(RedeemVoucher(code=CODE, customer_id=f"c{i}")), Decided)
    error = refused(north.send(RedeemVoucher(code=CODE, customer_id="c2")))
    assert isinstance(error, ShareExhausted)
    assert wants_share(error)
    out = want(north)
    assert [(type(e).__name__, getattr(e, "wanted_total", None)) for e in out] == [
        ("ShareWanted", 1)
    ]
    assert north.state.share is not None
    assert (north.state.share.wanted, north.state.share.wanting) == (1, True)
    # A storm of refusals: no more events until the next share received.
    before = len(north.log)
    for _ in range(5):
        assert want(north) == []
    assert len(north.log) == before
    # The same command id again replays its receipt.
    assert isinstance(north.send(WantShare(code=CODE), north.log[-1].envelope.command_id), Replayed)
    # A new share received (the pool empty now: the refusal reads cap_reached, with the
    # share in its details): it may say so again, counted on.
    receive(north, hub, 3, allotted_total=2, pool_empty=True)
    error = refused(north.send(RedeemVoucher(code=CODE, customer_id="c2")))
    assert isinstance(error, CapReached)
    assert error.context["share"] == 2
    assert [getattr(e, "wanted_total", None) for e in want(north)] == [2]
    # Topped up: unused again, no want; the flag is down.
    receive(north, hub, 4, allotted_total=3)
    assert want(north) == []
    assert not north.state.share.wanting
    # Revoked: never.
    receive(north, hub, 5, allotted_total=3, revoked=True)
    assert want(north) == []
    # The fold of the log (fingerprints rebuilt from the events, as on replay) equals the
    # state built live.
    history = [
        rec.model_copy(
            update={"envelope": rec.envelope.model_copy(update={"command_fingerprint": ""})}
        )
        for rec in north.log
    ]
    assert voucher.fold(CODE, history) == north.state
    wanted = [r for r in north.log if isinstance(r.envelope.event, ShareWanted)]
    assert voucher.fingerprint_of_event(wanted[0]) == WantShare(code=CODE).fingerprint()


def test_a_sovereign_emptied_by_a_recall_whose_customers_come_later_gets_slots_back() -> None:
    hub = issued(cap=40)  # share 10 each, pool 20, low water 2
    north = Sovereign("north")  # south: its figures as the hub's trail shows them
    receive(north, hub, 2, allotted_total=10)
    observe(hub, "north", 1)  # north's record of the code on the trail: 10 unused
    # south's customers come first: topped up twice, the pool is empty, it uses all it has.
    observe(hub, "south", 2, redeemed=8)
    observe(hub, "south", 3, redeemed=18)
    assert (hub.state.part("south").allotted, hub.state.pool) == (30, 0)
    out = events_of(observe(hub, "south", 4, redeemed=30))  # none left: north is asked
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalRecallRequested)] == [
        ("north", 5)
    ]
    # and the operator asks north for the rest: north, with no customer yet, gives all 10.
    assert isinstance(hub.send(RecallShare(code=CODE, sovereign="north", slots=5)), Decided)
    out = events_of(receive(north, hub, 6, allotted_total=10, requested_total=10))
    assert [(e.slots, e.released_total) for e in out if isinstance(e, ShareReleased)] == [(10, 10)]
    out = events_of(observe(hub, "north", 5, released_total=10, answered_total=10))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)] == [
        ("south", 10)
    ]
    assert hub.state.pool == 0
    # south's customers are done: its 10 sit unused. north's customers come now: refused (the
    # pool was empty when north last heard: cap_reached, its share in the details).
    receive(north, hub, 8, allotted_total=10, requested_total=10, pool_empty=True)
    error = refused(north.send(RedeemVoucher(code=CODE, customer_id="n1")))
    assert wants_share(error)
    # Without a demand signal the hub would never know: the trail shows north as it was.
    out = events_of(observe(hub, "north", 6, released_total=10, answered_total=10))
    assert [type(e).__name__ for e in out] == ["GlobalObserved"]
    assert not hub.state.part("north").wanting
    # With it (as the checkout sends it on that refusal), once on the trail: north wants,
    # has none left, and south is asked for half its unused slots, rounded up.
    out = want(north)
    assert [getattr(e, "wanted_total", None) for e in out] == [1]
    assert want(north) == []  # the next refused customer adds nothing
    out = events_of(observe(hub, "north", 7, released_total=10, answered_total=10, wanted_total=1))
    assert hub.state.part("north").wanting
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalRecallRequested)] == [
        ("south", 5)
    ]
    # south answers; its 5 slots go to north, whose customer redeems.
    out = events_of(observe(hub, "south", 8, redeemed=30, released_total=5, answered_total=5))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalShareAllotted)] == [
        ("north", 5)
    ]
    assert not hub.state.part("north").wanting
    receive(north, hub, 12, allotted_total=15, requested_total=10, pool_empty=True)
    assert isinstance(north.send(RedeemVoucher(code=CODE, customer_id="n1")), Decided)


def test_a_want_the_hub_cannot_serve_now_is_kept_and_moves_no_slot_twice() -> None:
    hub = issued(cap=40)
    observe(hub, "south", 1, redeemed=8)
    observe(hub, "south", 2, redeemed=18)  # south 30 allotted, pool empty
    # north has a top-up in flight as far as the hub knows (unused 10 at the hub): a want
    # read now is stale (north had not received it yet) and asks for nothing.
    out = events_of(observe(hub, "north", 3, wanted_total=1))
    assert [type(e).__name__ for e in out] == ["GlobalObserved"]
    assert not hub.state.part("north").wanting
    # north used all 10, said so again (a new exhaustion): wanting, south asked once.
    out = events_of(observe(hub, "north", 4, redeemed=10, wanted_total=2))
    assert [(e.sovereign, e.slots) for e in out if isinstance(e, GlobalRecallRequested)] == [
        ("south", 6)
    ]
    # The same want read again (a restarted allocator, a later trail position), or a later
    # record with no new want: the recall is outstanding, nothing more is asked.
    for seq in (5, 6):
        out = events_of(observe(hub, "north", seq, redeemed=10, wanted_total=2))
        assert [type(e).__name__ for e in out] == ["GlobalObserved"]
    assert hub.state.part("north").wanting  # kept until slots are given
    # south answers with nothing (its customers took them): north still wants, and nobody
    # holds an unused slot: nothing moves, whatever is observed.
    out = events_of(observe(hub, "south", 7, redeemed=30, answered_total=6))
    assert [type(e).__name__ for e in out] == ["GlobalObserved"]
    out = events_of(observe(hub, "north", 8, redeemed=10, wanted_total=3))
    assert [type(e).__name__ for e in out] == ["GlobalObserved"]
    assert hub.state.pool == 0
