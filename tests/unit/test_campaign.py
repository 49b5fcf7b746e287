"""Issue #21: the campaign aggregate's decider and the shape of its codes, without servers; and
the processor deciding a campaign's codes on the in-memory store (a conflict in flight, a
failed append: the cap and the budget stay exact)."""

from __future__ import annotations

import itertools
import os
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_processor_memory import ADMIN, Rig
from voucher_ledger.commands.store import EventStoreUnavailable
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger import campaign
from voucher_ledger.ledger.campaign_codes import (
    ALPHABET,
    LOOK_ALIKES,
    RANDOM_LENGTH,
    alphabet_is_clean,
    campaign_of,
    generate_codes,
    new_campaign_id,
    random_text,
)
from voucher_ledger.ledger.commands import (
    CreateCampaign,
    GenerateCampaignCodes,
    IssueVoucher,
    RedeemVoucher,
    ReverseRedemption,
    RevokeCampaign,
    RevokeVoucher,
)
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import (
    SYSTEM_ACTOR,
    CampaignCodeRedeemed,
    EventEnvelope,
    RecordedEvent,
    encode_envelope,
)
from voucher_ledger.ledger.voucher import Decided, Policy, Refused, Replayed

CID = "K7RXAM"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Campaign:
    """A campaign's state driven through ``handle`` and ``evolve`` as the processor does."""

    def __init__(self, campaign_id: str = CID) -> None:
        self.state = campaign.initial_state(campaign_id)
        self.seq = itertools.count(1)
        self.ids = itertools.count(1)

    def run(self, command: object, command_id: str | None = None, now: datetime = NOW) -> object:
        cid = command_id or f"c{next(self.ids)}"
        outcome = campaign.handle(self.state, command, cid, Policy(), now)  # type: ignore[arg-type]
        if isinstance(outcome, Decided):
            fingerprint = command.fingerprint()  # type: ignore[attr-defined]
            for event in outcome.events:
                env = EventEnvelope(
                    event_id=f"e{cid}",
                    aggregate="campaign",
                    aggregate_id=self.state.campaign_id,
                    occurred_at=now,
                    actor=SYSTEM_ACTOR,
                    command_id=cid,
                    command_fingerprint=fingerprint,
                    event=event,
                )
                recorded = RecordedEvent(seq=next(self.seq), envelope=env)
                self.state = campaign.evolve(self.state, recorded, fingerprint)
        return outcome

    def create(self, **fields: object) -> None:
        base: dict[str, object] = {
            "campaign_id": self.state.campaign_id,
            "name": "n",
            "credit_baisa": 5000,
        }
        outcome = self.run(CreateCampaign(**{**base, **fields}))  # type: ignore[arg-type]
        assert isinstance(outcome, Decided), outcome

    def generate(self, count: int, prefix: str | None = None) -> list[str]:
        before = set(self.state.codes)
        outcome = self.run(
            GenerateCampaignCodes(campaign_id=self.state.campaign_id, count=count, prefix=prefix)
        )
        assert isinstance(outcome, Decided), outcome
        new = [c for e in outcome.events for c in e.codes]  # type: ignore[union-attr]
        assert not set(new) & before
        return new

    def redeem(self, code: str, customer: str, **kw: object) -> object:
        return self.run(RedeemVoucher(code=code, customer_id=customer, **kw))  # type: ignore[arg-type]


def reason(outcome: object) -> str:
    assert isinstance(outcome, Refused), outcome
    return outcome.error.reason


# ------------------------------------------------------------------------------- codes


def test_the_alphabet_has_no_look_alikes_and_codes_carry_at_least_40_bits() -> None:
    assert alphabet_is_clean()
    assert not set("0O1IL") & set(ALPHABET)
    for group in LOOK_ALIKES:
        assert len(set(group) & set(ALPHABET)) <= 1, group
    assert len(ALPHABET) ** RANDOM_LENGTH >= 2**40
    assert not alphabet_is_clean("AB8")  # the check can fail: B and 8 read alike
    assert not alphabet_is_clean("A0")


def test_a_hundred_thousand_generated_codes_are_unique_and_name_their_campaign() -> None:
    cid = new_campaign_id(os.urandom)
    codes = generate_codes(cid, "OMAN", 100_000, os.urandom, lambda c: False)
    assert len(set(codes)) == 100_000
    for code in codes:
        assert campaign_of(code) == cid
        body = code.removeprefix(f"OMAN-{cid}-")
        assert len(body) == RANDOM_LENGTH
        assert set(body) <= set(ALPHABET)
    # every character of the alphabet is drawn, about evenly (no modulo bias to speak of)
    counts = {ch: 0 for ch in ALPHABET}
    for code in codes[:20_000]:
        for ch in code[-RANDOM_LENGTH:]:
            counts[ch] += 1
    expected = 20_000 * RANDOM_LENGTH / len(ALPHABET)
    assert all(abs(n - expected) < expected * 0.05 for n in counts.values()), counts


def test_random_text_rejects_bytes_instead_of_folding_them() -> None:
    # Bytes from 240 on are dropped: a source of only such bytes, then 0..23, yields 0..23.
    chunks = iter([bytes([250, 255, 241] * 10), bytes(range(24)) * 2])
    assert random_text(24, lambda n: next(chunks)) == ALPHABET


def test_a_taken_code_is_drawn_again() -> None:
    draws = iter([bytes([0] * 10 + [1] * 10), bytes([2] * 30)])
    codes = generate_codes(CID, None, 2, lambda n: next(draws), {f"{CID}-2222222222"}.__contains__)
    assert codes == [f"{CID}-3333333333", f"{CID}-4444444444"]


@pytest.mark.parametrize(
    "code",
    [
        "SUMMER-2024",
        "VCH-23456789ABCD",
        "WELCOME10",
        f"{CID}-23456789A",
        f"A-B-{CID}-2345678923",
        f"{CID}-2345678920",
        f"{CID.lower()}X-2345678923",
    ],
)
def test_other_codes_are_no_campaigns(code: str) -> None:
    assert campaign_of(code.upper()) is None


def test_every_command_for_a_campaigns_code_goes_to_the_campaign() -> None:
    layout = Layout(prefix="t", partitions=8)
    codes = generate_codes(CID, "OMAN", 50, os.urandom, lambda c: False)
    subjects = {
        layout.command_subject(*RedeemVoucher(code=c.lower(), customer_id="o").aggregate)
        for c in codes
    }
    assert subjects == {f"t.commands.{layout.partition_of(CID)}.campaign.{CID}"}
    assert ReverseRedemption(code=codes[0], customer_id="o").aggregate == ("campaign", CID)
    assert GenerateCampaignCodes(campaign_id=CID.lower(), count=1).aggregate == ("campaign", CID)
    assert layout.event_subject("campaign", CID) == f"t.events.campaign.{CID}"
    with pytest.raises(ValueError, match="campaign id"):
        layout.campaign_subject("A.B*>X")
    with pytest.raises(InvalidInput):
        GenerateCampaignCodes(campaign_id="K7QXA*", count=1)


# ------------------------------------------------------------------------------- decider


def test_one_cap_across_codes_each_codes_own_cap_and_one_redemption_per_account() -> None:
    c = Campaign()
    c.create(max_redemptions=3, code_max_redemptions=2)
    a, b, d, e = c.generate(4)
    assert isinstance(c.redeem(a, "o1"), Decided)
    assert isinstance(c.redeem(a, "o2"), Decided)
    assert reason(c.redeem(a, "o3")) == "cap_reached"  # the code's own cap of 2
    assert reason(c.redeem(b, "o1")) == "already_redeemed"  # once per account per campaign
    assert reason(c.redeem(b, "o9", user_id="o1")) == "already_redeemed"  # and per user
    assert isinstance(c.redeem(b, "o3"), Decided)
    refused = c.redeem(d, "o4")
    assert reason(refused) == "cap_reached"  # the campaign's cap of 3
    assert "campaign" in refused.error.message  # type: ignore[attr-defined]
    assert reason(c.redeem("OMAN-" + CID + "-2345678923", "o5")) == "not_found"
    assert c.state.figures.times_redeemed == 3
    # A reversal gives the campaign's slot back; the code's own count too.
    held = c.state.codes[a].redemptions["o1"]
    wrong = c.run(ReverseRedemption(code=a, customer_id="o1", redemption_id="nope"))
    assert reason(wrong) == "redemption_not_found"
    back = c.run(ReverseRedemption(code=a, customer_id="o1", redemption_id=held.redemption_id))
    assert isinstance(back, Decided)
    assert isinstance(c.redeem(e, "o4"), Decided)
    assert c.state.figures.times_redeemed == 3
    assert c.state.codes[a].times_redeemed == 1


def test_the_budget_binds_and_a_reversal_gives_its_share_back() -> None:
    c = Campaign()
    c.create(budget_baisa=12_000)  # 5,000 a code: two fit
    codes = c.generate(4)
    assert isinstance(c.redeem(codes[0], "o1"), Decided)
    assert isinstance(c.redeem(codes[1], "o2"), Decided)
    assert reason(c.redeem(codes[2], "o3")) == "budget_exhausted"
    assert c.state.budget_left() == 2_000
    c.run(ReverseRedemption(code=codes[0], customer_id="o1"))
    assert c.state.budget_left() == 7_000
    assert isinstance(c.redeem(codes[2], "o3"), Decided)
    assert reason(c.redeem(codes[3], "o4")) == "budget_exhausted"
    assert c.state.view().granted_baisa == 10_000


def test_window_eligibility_inactive_and_revoked_refuse_like_a_voucher() -> None:
    c = Campaign()
    c.create(
        starts_at=NOW,
        expires_at=NOW + timedelta(days=1),
        plans=["business"],
        min_order_baisa=3000,
        credit_valid_for_seconds=3600,
    )
    (code, other) = c.generate(2)
    early = c.run(RedeemVoucher(code=code, customer_id="o"), now=NOW - timedelta(seconds=1))
    assert reason(early) == "not_started"
    late = c.run(RedeemVoucher(code=code, customer_id="o"), now=NOW + timedelta(days=1))
    assert reason(late) == "voucher_expired"
    assert reason(c.redeem(code, "o", plan_id="starter", order_total_baisa=5000)) == "not_eligible"
    assert reason(c.redeem(code, "o", plan_id="business", order_total_baisa=2000)) == (
        "not_eligible"
    )
    ok = c.redeem(code, "o", plan_id="business", order_total_baisa=5000)
    assert isinstance(ok, Decided)
    event = ok.events[0]
    assert isinstance(event, CampaignCodeRedeemed)
    assert event.credit_expires_at == NOW + timedelta(hours=1)
    assert reason(c.run(IssueVoucher(code=other, credit_baisa=1))) == "campaign_code"
    assert reason(c.run(RevokeVoucher(code=other))) == "campaign_code"
    assert isinstance(c.run(RevokeCampaign(campaign_id=CID)), Decided)
    assert reason(c.redeem(other, "o2", plan_id="business", order_total_baisa=5000)) == (
        "not_found"
    )
    assert reason(c.run(GenerateCampaignCodes(campaign_id=CID, count=1))) == "not_found"
    assert reason(c.run(RevokeCampaign(campaign_id=CID))) == "not_found"
    inactive = Campaign("2A2A2A")
    inactive.create(active=False)
    assert reason(inactive.redeem(inactive.generate(1)[0], "o")) == "inactive"


def test_a_retried_command_replays_its_receipt_and_a_reused_id_is_refused() -> None:
    c = Campaign()
    c.create(max_redemptions=1)
    a, b = c.generate(2)
    first = c.run(RedeemVoucher(code=a, customer_id="o1"), "redeem-order-1")
    again = c.run(RedeemVoucher(code=a, customer_id="o1"), "redeem-order-1")
    assert isinstance(first, Decided)
    assert isinstance(again, Replayed)
    receipt = again.receipt
    assert receipt.redemption is not None
    assert receipt.redemption.redemption_id == first.events[0].redemption_id  # type: ignore[union-attr]
    assert receipt.voucher is not None
    assert (receipt.voucher.code, receipt.voucher.times_redeemed) == (a, 1)
    assert reason(c.run(RedeemVoucher(code=b, customer_id="o2"), "redeem-order-1")) == (
        "command_id_reused"
    )
    assert reason(c.run(CreateCampaign(campaign_id=CID, name="x", credit_baisa=1))) == (
        "already_exists"
    )
    # the generation's receipt says how many it made (its codes: in the read model)
    gen = c.run(GenerateCampaignCodes(campaign_id=CID, count=12_345), "gen-1")
    assert isinstance(gen, Decided)
    replay = c.run(GenerateCampaignCodes(campaign_id=CID, count=12_345), "gen-1")
    assert isinstance(replay, Replayed)
    assert replay.receipt.campaign.generated == 12_345
    assert c.state.figures.codes_issued == 12_347


def test_a_generation_of_100_000_codes_is_parts_far_below_the_message_limit() -> None:
    c = Campaign()
    c.create()
    outcome = c.run(GenerateCampaignCodes(campaign_id=CID, count=100_000, prefix="X" * 16))
    assert isinstance(outcome, Decided)
    assert len(outcome.events) == 20
    for part in outcome.events:
        env = EventEnvelope(
            event_id="e",
            aggregate="campaign",
            aggregate_id=CID,
            occurred_at=NOW,
            actor=SYSTEM_ACTOR,
            command_id="x" * 128,
            command_fingerprint="f" * 32,
            event=part,
        )
        assert len(encode_envelope(env)) < 400_000  # NATS's default max_payload: 1 MB


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 14), st.booleans()), max_size=80),
    st.integers(0, 6),
    st.one_of(st.none(), st.integers(5000, 40_000)),
)
def test_no_sequence_of_redemptions_and_reversals_exceeds_the_cap_or_the_budget(
    steps: list[tuple[int, int, bool]], cap: int, budget: int | None
) -> None:
    c = Campaign()
    c.create(max_redemptions=cap, budget_baisa=budget, code_max_redemptions=2)
    codes = c.generate(10)
    for code_i, customer_i, reverse in steps:
        if reverse:
            c.run(ReverseRedemption(code=codes[code_i], customer_id=f"o{customer_i}"))
        else:
            c.redeem(codes[code_i], f"o{customer_i}")
        f = c.state.figures
        active = sum(e.times_redeemed for e in c.state.codes.values())
        assert f.times_redeemed == active == len(c.state.accounts)
        assert not cap or f.times_redeemed <= cap
        assert budget is None or f.granted_baisa <= budget
        assert f.granted_baisa == 5000 * f.times_redeemed
        assert all(e.times_redeemed <= 2 for e in c.state.codes.values())
    # the fold of the events equals the state decided step by step
    assert c.state.figures.times_redeemed == c.state.view().times_redeemed


# ------------------------------------------------------------------------------- processor


async def test_the_processor_decides_a_campaigns_codes_one_after_another() -> None:
    """Many customers, many codes of one campaign; the append in flight fails and those
    decided after it go back to be decided again; the failed ones come back (as after
    ack_wait): exactly the cap is taken, every other customer refused at it."""
    rig = Rig()
    create = rig.command(
        CreateCampaign(campaign_id=CID, name="n", credit_baisa=1000, max_redemptions=7), ADMIN
    )
    gen = rig.command(GenerateCampaignCodes(campaign_id=CID, count=40), ADMIN)
    await rig.proc.process([create, gen])
    made = rig.reply(gen)
    assert isinstance(made, Accepted)
    assert made.campaign is not None
    assert made.campaign.generated == 40
    codes = sorted(rig.proc.cache.get(("campaign", CID)).codes)
    hold = rig.store.hold()
    rig.store.fail_next(EventStoreUnavailable("the append timed out"))
    first = [rig.redeem(codes[0], "o0"), rig.redeem(codes[1], "o1")]
    await rig.proc.turn(first)
    rest = [rig.redeem(codes[i], f"o{i}") for i in range(2, 40)]
    random.Random(3).shuffle(rest)
    await rig.proc.turn(rest)
    hold.release()
    await rig.proc.drain()
    assert not any(d.acked for d in first)  # the failed append: not answered, not acked
    await rig.proc.process(first)  # redelivered
    every = first + rest
    assert all(d.acked for d in every)
    replies = [rig.reply(d) for d in every]
    accepted = [r for r in replies if isinstance(r, Accepted)]
    assert len(accepted) == 7
    assert {r.reason for r in replies if isinstance(r, Rejected)} == {"cap_reached"}
    history = await rig.store.load(Layout(prefix="mem", partitions=1).campaign_subject(CID))
    redeemed = [
        r.envelope.event for r in history if isinstance(r.envelope.event, CampaignCodeRedeemed)
    ]
    assert len(redeemed) == 7
    assert {e.redemption_id for e in redeemed} == {
        r.redemption.redemption_id for r in accepted if r.redemption is not None
    }
