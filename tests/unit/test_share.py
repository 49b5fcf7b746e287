"""Global vouchers' shares (ledger/share.py): the cap holds across Sovereigns whatever the links do.

A simulated hub and two Sovereigns exchange the cumulative figures the real ones would carry by
stream sourcing: in order on each link, held (not lost) while a link is cut, sometimes delivered
twice. Customers redeem at random on either Sovereign, the hub tops up and recalls at random, links
are cut and healed at random. After every step: the redemptions of all Sovereigns together never
exceed the cap, and no Sovereign spends or releases more than it received. At the end, with every
link healed, the customers still waiting use up exactly the cap: no slot is lost by a recall.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from voucher_ledger.ledger import share
from voucher_ledger.ledger.errors import AlreadyRedeemed, DomainError, VoucherInactive

NAMES = ("north", "south")


@dataclass
class World:
    cap: int
    hub: share.HubShares
    sovs: dict[str, share.SovereignShare]
    policy: share.AllocationPolicy
    down: dict[str, deque[tuple[int, int, bool]]] = field(default_factory=dict)  # hub -> sov
    up: dict[str, deque[tuple[int, int]]] = field(default_factory=dict)  # sov -> hub
    cut: set[str] = field(default_factory=set)
    seen_redeemed: dict[str, int] = field(default_factory=dict)  # what the hub's trail shows
    customers: int = 0

    @classmethod
    def start(cls, cap: int) -> World:
        world = cls(
            cap=cap,
            hub=share.HubShares("GLOBAL", cap),
            sovs={n: share.SovereignShare("GLOBAL", n) for n in NAMES},
            policy=share.AllocationPolicy(NAMES),
            down={n: deque() for n in NAMES},
            up={n: deque() for n in NAMES},
        )
        for name, slots in world.policy.initial(world.hub):
            world.hub_apply(share.allot(world.hub, name, slots))
        return world

    # The hub's events go out to the Sovereign they name (revocation to all): sourcing.
    def hub_apply(self, events: list[share.HubEvent]) -> None:
        for event in events:
            self.hub = share.evolve_hub(self.hub, event)
            targets = [event.sovereign] if hasattr(event, "sovereign") else list(NAMES)
            for name in targets:
                self.down[name].append(
                    (
                        self.hub.allotted.get(name, 0),
                        self.hub.requested.get(name, 0),
                        self.hub.revoked,
                    )
                )

    def sov_apply(self, name: str, events: list[share.SovereignEvent]) -> None:
        for event in events:
            self.sovs[name] = share.evolve_sovereign(self.sovs[name], event)
            self.up[name].append((self.sovs[name].redeemed, self.sovs[name].released))

    def deliver(self, name: str, twice: bool = False) -> None:
        if name in self.cut:
            return
        if self.down[name]:
            msg = self.down[name][0] if twice else self.down[name].popleft()
            self.sov_apply(name, share.receive(self.sovs[name], *msg))
        if self.up[name]:
            redeemed, released = self.up[name][0] if twice else self.up[name].popleft()
            self.seen_redeemed[name] = max(self.seen_redeemed.get(name, 0), redeemed)
            self.hub_apply(share.record_release(self.hub, name, released))

    def redeem(self, name: str) -> bool:
        self.customers += 1
        try:
            self.sov_apply(name, share.redeem(self.sovs[name], f"c{self.customers}"))
        except DomainError:
            return False
        return True

    def top_up(self) -> None:
        for name, slots in self.policy.top_ups(self.hub, self.seen_redeemed):
            self.hub_apply(share.allot(self.hub, name, slots))

    def check(self) -> None:
        total = sum(s.redeemed for s in self.sovs.values())
        assert total <= self.cap
        assert self.hub.pool >= 0
        for name, s in self.sovs.items():
            assert s.redeemed + s.released <= s.received
            assert self.hub.released.get(name, 0) <= s.released
            assert s.received <= self.hub.allotted.get(name, 0)

    def heal_and_drain(self) -> None:
        self.cut.clear()
        for _ in range(10_000):
            if not any(self.down[n] or self.up[n] for n in NAMES):
                return
            for name in NAMES:
                self.deliver(name)
                self.check()
        raise AssertionError("links never drained")


@pytest.mark.parametrize("seed", range(300))
def test_the_global_cap_holds_whatever_the_links_do_and_no_slot_is_lost(seed: int) -> None:
    rnd = random.Random(seed)
    cap = rnd.choice([1, 2, 7, 40, 100])
    world = World.start(cap)
    for _ in range(rnd.randint(50, 600)):
        name = rnd.choice(NAMES)
        roll = rnd.random()
        if roll < 0.45:
            world.redeem(name)
        elif roll < 0.65:
            world.deliver(name, twice=rnd.random() < 0.1)
        elif roll < 0.72:
            world.top_up()
        elif roll < 0.77:
            world.hub_apply(share.request_recall(world.hub, name, rnd.randint(1, 5)))
        elif roll < 0.85:
            world.sov_apply(name, share.answer_recall(world.sovs[name]))
        elif roll < 0.93:
            world.cut.add(name)
        else:
            world.cut.discard(name)
        world.check()
    # Every link back: the customers still coming use up the cap exactly.
    world.heal_and_drain()
    for _ in range(5 * cap + 50):
        progressed = False
        for name in NAMES:
            world.sov_apply(name, share.answer_recall(world.sovs[name]))
        world.heal_and_drain()
        world.top_up()
        world.heal_and_drain()
        for name in NAMES:
            progressed |= world.redeem(name)
        world.check()
        if (
            not progressed
            and world.hub.pool == 0
            and all(s.unused == 0 for s in world.sovs.values())
        ):
            break
    assert sum(s.redeemed for s in world.sovs.values()) == cap


def test_a_cut_off_sovereign_redeems_its_share_then_says_exhausted_and_resumes_after_heal() -> None:
    world = World.start(100)
    world.heal_and_drain()
    north = world.sovs["north"]
    assert north.received == 25  # half the cap, in equal shares
    world.cut.add("north")
    assert sum(world.redeem("north") for _ in range(40)) == 25
    with pytest.raises(share.ShareExhausted) as refused:
        share.redeem(world.sovs["north"], "late-customer")
    assert refused.value.reason == "share_exhausted"
    world.top_up()  # the hub does not know yet: nothing for north
    assert world.hub.allotted["north"] == 25
    world.heal_and_drain()
    world.top_up()
    world.heal_and_drain()
    assert world.sovs["north"].unused == 25
    assert world.redeem("north")


def test_revocation_stops_a_sovereign_once_it_arrives_not_before() -> None:
    world = World.start(100)
    world.heal_and_drain()
    world.cut.add("south")
    world.hub_apply(share.revoke(world.hub))
    world.deliver("north")
    assert not world.redeem("north")  # arrived: refused
    with pytest.raises(VoucherInactive):
        share.redeem(world.sovs["north"], "x")
    assert world.redeem("south")  # cut off: it does not know yet, and spends its share only
    world.heal_and_drain()
    assert not world.redeem("south")
    # Revoked codes give back every unused slot; the hub allots nothing more.
    for name in NAMES:
        world.sov_apply(name, share.answer_recall(world.sovs[name]))
    world.heal_and_drain()
    assert world.policy.top_ups(world.hub, world.seen_redeemed) == []
    assert world.hub.pool == 100 - 1


def test_the_hub_refuses_an_allotment_past_its_pool_and_a_customer_redeems_once() -> None:
    hub = share.HubShares("G", 3)
    hub = share.evolve_hub(hub, share.allot(hub, "north", 3)[0])
    with pytest.raises(share.PoolExhausted):
        share.allot(hub, "south", 1)
    sov = share.SovereignShare("G", "north")
    sov = share.evolve_sovereign(sov, share.receive(sov, 3, 0, False)[0])
    sov = share.evolve_sovereign(sov, share.redeem(sov, "c1")[0])
    with pytest.raises(AlreadyRedeemed):
        share.redeem(sov, "c1")
    assert share.receive(sov, 2, 0, False) == []  # an older figure changes nothing
    with pytest.raises(DomainError):
        share.record_release(hub, "north", 4)
