"""Issue #20: the billing account is the Organization (the checkout's ``tenant_id``), against a
real ``voucher-ledger serve``.

Membership is verified, never taken from the body: the token's ``orgs`` claim when it carries
one, else the account belongs to the user whose checkout first opened an order for it (a
refused checkout changes nothing, ownership included). A code redeems once per Organization
and once per user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.api_helpers import Reply, assert_json_error, call
from tests.e2e.checkout_helpers import CHECKOUT, Shop, new_code, new_customer, shop
from voucher_ledger.http.auth import mint_token

OMR = 1000
BALANCE = "/billing/balance"
NOT_MEMBER = "you are not a member of this organization"


@pytest.fixture(scope="module")
async def orgs_shop(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Shop]:
    async with shop(tmp_path_factory.mktemp("orgs"), nats_url, pg_url, "orgs") as s:
        yield s


def member_token(s: Shop, sub: str, orgs: list[str] | None) -> dict[str, str]:
    extra: dict[str, Any] | None = {"orgs": orgs} if orgs is not None else None
    token = mint_token(s.server.secret.encode(), sub, "member", extra=extra)
    return {"Authorization": f"Bearer {token}"}


async def checkout(
    s: Shop,
    sub: str,
    tenant: str,
    *,
    orgs: list[str] | None = None,
    code: str | None = None,
    plan: str = "free",
) -> Reply:
    body: dict[str, Any] = {"plan_id": plan, "tenant_id": tenant, "apps": [], "addons": []}
    if code is not None:
        body["promo_code"] = code
    return await call(
        s.session,
        "POST",
        s.server.url(CHECKOUT),
        json_body=body,
        headers=member_token(s, sub, orgs),
    )


async def balance(
    s: Shop, sub: str, tenant: str | None = None, *, orgs: list[str] | None = None
) -> Reply:
    path = BALANCE if tenant is None else f"{BALANCE}?tenant_id={tenant}"
    return await call(s.session, "GET", s.server.url(path), headers=member_token(s, sub, orgs))


def org(stem: str = "org") -> str:
    return new_customer(stem)


async def test_a_storm_of_200_users_of_50_organizations_redeems_once_per_organization(
    orgs_shop: Shop,
) -> None:
    """200 users (4 in each of 50 Organizations, by their tokens' claim) race on one code with
    a cap of 1,000, all at once: exactly 50 redemptions, one per Organization, each credited
    to its Organization; and a user in two Organizations racing for both redeems once."""
    s = orgs_shop
    code = new_code("STORM")
    await s.issue(code, 10, max_redemptions=1000)
    orgs = [org("storm") for _ in range(50)]
    users = [(f"{o}-user-{i}", o) for o in orgs for i in range(4)]
    both = new_customer("both")
    pair = [org("pair-a"), org("pair-b")]
    attempts = [checkout(s, sub, o, orgs=[o], code=code) for sub, o in users]
    attempts += [checkout(s, both, o, orgs=pair, code=code) for o in pair]
    replies = await asyncio.gather(*attempts)

    storm, twin = replies[:200], replies[200:]
    won = [o for (_, o), r in zip(users, storm, strict=True) if r.status == 200]
    assert sorted(won) == sorted(orgs), "exactly one redemption per Organization"
    for reply in storm:
        if reply.status != 200:
            assert "already redeemed" in assert_json_error(reply, 400)
    assert sorted(r.status for r in twin) == [200, 400], twin
    refused = next(r for r in twin if r.status == 400)
    assert "already redeemed by this user" in assert_json_error(refused, 400)

    voucher = await s.voucher(code)
    assert voucher["times_redeemed"] == 51
    listed = await s.request("GET", f"/billing/vouchers/{code}/redemptions?limit=1000")
    redemptions = listed.json["redemptions"]
    assert len(redemptions) == 51
    assert sorted(r["customer_id"] for r in redemptions) == sorted(
        [*orgs, next(o for o, r in zip(pair, twin, strict=True) if r.status == 200)]
    )
    assert len({r["user_id"] for r in redemptions}) == 51
    for o in orgs[:5]:  # any member reads the Organization's credit (granted once)
        reply = await balance(s, f"{o}-user-3", o, orgs=[o])
        assert reply.status == 200, reply
        assert reply.json["credit_baisa"] == 10 * OMR


async def test_a_token_whose_orgs_lack_the_tenant_gets_403_on_checkout_and_balance(
    orgs_shop: Shop,
) -> None:
    s = orgs_shop
    mine, theirs = org("mine"), org("theirs")
    owner = new_customer()
    assert (await checkout(s, owner, theirs)).status == 200  # theirs exists, owned by owner
    before = await s.stream_seq()
    intruder = new_customer()
    for tenant in (theirs, org("nobody")):
        reply = await checkout(s, intruder, tenant, orgs=[mine])
        assert assert_json_error(reply, 403) == NOT_MEMBER
        assert assert_json_error(await balance(s, intruder, tenant, orgs=[mine]), 403) == NOT_MEMBER
    assert await s.stream_seq() == before, "a refused checkout writes nothing"
    # an empty claim names no Organization either
    assert (await checkout(s, intruder, theirs, orgs=[])).status == 403
    # a token naming the Organization is a member, though another user opened it
    reply = await checkout(s, intruder, theirs, orgs=[theirs])
    assert reply.status == 200, reply


async def test_without_the_claim_the_first_user_owns_the_account_and_others_get_403(
    orgs_shop: Shop,
) -> None:
    s = orgs_shop
    acme = org("acme")
    ann, bob = new_customer("ann"), new_customer("bob")
    code = new_code("ACME")
    await s.issue(code, 7)
    # a refused checkout (an unknown code) changes nothing, ownership included
    refused = await checkout(s, bob, acme, code=new_code("NOPE"))
    assert "invalid promo code" in assert_json_error(refused, 400)
    first = await checkout(s, ann, acme, code=code)
    assert first.status == 200, first
    assert first.json["credit_balance_baisa"] == 7 * OMR
    before = await s.stream_seq()
    assert assert_json_error(await checkout(s, bob, acme), 403) == NOT_MEMBER
    assert assert_json_error(await balance(s, bob, acme), 403) == NOT_MEMBER
    assert await s.stream_seq() == before

    # ann reads it named or not (her only Organization); an issuer reads any
    for reply in (await balance(s, ann, acme), await balance(s, ann)):
        assert reply.status == 200, reply
        assert reply.json["credit_baisa"] == 7 * OMR
        assert reply.json["entries"][0]["kind"] == "granted"
    issuer = await s.request("GET", f"{BALANCE}?tenant_id={acme}")
    assert issuer.json["credit_baisa"] == 7 * OMR
    # bob owns nothing yet: an empty balance; an Organization nobody opened: empty too
    for reply in (await balance(s, bob), await balance(s, bob, org("fresh"))):
        assert reply.status == 200, reply
        assert (reply.json["credit_baisa"], reply.json["entries"]) == (0, [])

    # ann opens a second Organization: without naming one her balance is a 400
    assert (await checkout(s, ann, org("acme-2"))).status == 200
    assert "name one" in assert_json_error(await balance(s, ann), 400)
    assert (await balance(s, ann, acme)).json["credit_baisa"] == 7 * OMR
    several = await balance(s, bob, orgs=[org("x"), org("y")])
    assert "name one" in assert_json_error(several, 400)


async def test_members_share_the_organizations_credit(orgs_shop: Shop) -> None:
    s = orgs_shop
    team = org("team")
    first, second = new_customer("m1"), new_customer("m2")
    code = new_code("TEAM")
    await s.issue(code, 20)
    granted = await checkout(s, first, team, orgs=[team], code=code)
    assert granted.status == 200, granted
    spent = await checkout(s, second, team, orgs=[team], plan="starter")  # 9 OMR from the 20
    assert spent.status == 200, spent
    assert (spent.json["paid_by_credit"], spent.json["credit_balance_baisa"]) == (True, 11 * OMR)
    reply = await balance(s, first, orgs=[team])  # the claim's only Organization
    assert reply.json["credit_baisa"] == 11 * OMR
    orders = [o for o in await s.orders() if o["tenant_id"] == team]
    assert {o["customer_id"] for o in orders} == {team}
    # the second member of the same Organization cannot redeem the code again
    again = await checkout(s, second, team, orgs=[team], code=code)
    assert "already redeemed" in assert_json_error(again, 400)


async def test_users_racing_to_open_a_new_organization_leave_it_one_owner(
    orgs_shop: Shop,
) -> None:
    """Without a claim, ten users check out for the same new Organization at once: the
    wallet decides them one after another, so one owns it and nine get 403, writing nothing."""
    s = orgs_shop
    fresh = org("race")
    users = [new_customer(f"racer{i}") for i in range(10)]
    replies = await asyncio.gather(*(checkout(s, u, fresh) for u in users))
    assert sorted(r.status for r in replies) == [200] + [403] * 9
    [owner] = [u for u, r in zip(users, replies, strict=True) if r.status == 200]
    orders = [o for o in await s.orders() if o["tenant_id"] == fresh]
    assert [o["customer_id"] for o in orders] == [fresh]
    assert (await balance(s, owner, fresh)).status == 200
    for user in users:
        if user != owner:
            assert (await balance(s, user, fresh)).status == 403
