"""Issue #22, global vouchers over HTTP at the hub on a real ``voucher-ledger serve`` (HUB=true,
no SOVEREIGNS: the body names them): issue with a cap across Sovereigns and their first
shares, recall, revoke, the Idempotency-Key, bad input refused with a clear 4xx and nothing
written; and on a serve that is not the hub, a 404 for every one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import Shop, new_code, shop
from tests.e2e.hub_helpers import observe

GLOBAL = "/billing/global-vouchers"


async def issue(s: Shop, **body: Any) -> dict[str, Any]:
    reply = await s.request("POST", GLOBAL, json_body=body)
    assert reply.status == 201, reply
    out: dict[str, Any] = reply.json
    return out


def shares(g: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """Per Sovereign: (allotted, released, redeemed, requested)."""
    return {
        x["sovereign"]: (x["allotted"], x["released"], x["redeemed"], x["requested"])
        for x in g["sovereigns"]
    }


async def read_model(s: Shop) -> list[Any]:
    return [
        tuple(r)
        for table in ("global_vouchers", "global_shares")
        for r in await s.db(f"SELECT * FROM {table} ORDER BY 1, 2")  # noqa: S608
    ]


async def refused(s: Shop, status: int, method: str, path: str, body: Any = None) -> str:
    """The request is refused with ``status`` and ``{"error"}``, and nothing is appended to the
    stream nor changed in the read model."""
    before, rows = await s.stream_seq(), await read_model(s)
    reply = await s.request(method, path, json_body=body)
    message = assert_json_error(reply, status)
    assert await s.stream_seq() == before, (method, path, body)
    assert await read_model(s) == rows, (method, path, body)
    return message


async def shown(s: Shop, code: str) -> dict[str, Any]:
    reply = await s.request("GET", f"{GLOBAL}/{code}")
    assert reply.status == 200, reply
    out: dict[str, Any] = reply.json
    return out


async def test_the_hub_issues_a_global_voucher_allots_shares_recalls_and_revokes(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    async with shop(tmp_path, nats_url, pg_url, "ghub", HUB="true") as s:
        code = new_code("GLOB")
        g = await issue(
            s,
            code=code.lower(),
            credit_omr=25,
            max_redemptions=100,
            description="OpenOva launch",
            sovereigns=["muscat", "salalah"],
        )
        assert (g["code"], g["credit_omr"], g["credit_baisa"]) == (code, 25, 25_000)
        assert (g["kind"], g["summary"], g["max_redemptions"], g["revoked"]) == (
            "credit",
            "25 OMR credit",
            100,
            False,
        )
        # The policy: half the cap split between the two Sovereigns, the rest in the pool.
        assert (g["share"], g["pool"], g["redeemed"]) == (25, 50, 0)
        assert shares(g) == {"muscat": (25, 0, 0, 0), "salalah": (25, 0, 0, 0)}
        assert [x["unused"] for x in g["sovereigns"]] == [25, 25]
        # Read back at once from the read model (read-your-writes), the same figures.
        assert await shown(s, code.lower()) == g

        # The allocator hears of muscat's redemptions: its unused share falls to the low-water
        # mark (a quarter of the share), so the hub tops it up from the pool.
        await observe(s.server, code, "muscat", 7, 20)
        seen = await shown(s, code)
        assert shares(seen)["muscat"] == (50, 0, 20, 0)
        assert (seen["pool"], seen["redeemed"]) == (25, 20)
        await observe(s.server, code, "salalah", 8, 3)
        seen = await shown(s, code)
        assert shares(seen) == {"muscat": (50, 0, 20, 0), "salalah": (25, 0, 3, 0)}
        assert (seen["pool"], seen["redeemed"]) == (25, 23)

        # A discount global voucher, and the same Idempotency-Key answers the same again.
        dcode = new_code("GDISC")
        body = {
            "code": dcode,
            "kind": "percent_off",
            "percent_off": 20,
            "applies_to": ["addons"],
            "duration": "P3M",
            "max_redemptions": 7,
            "sovereigns": ["muscat"],
        }
        key = {"Idempotency-Key": f"issue-{dcode}"}
        first = await s.request("POST", GLOBAL, json_body=body, headers=key)
        assert first.status == 201, first
        assert (first.json["kind"], first.json["percent_off"], first.json["credit_omr"]) == (
            "percent_off",
            20,
            0,
        )
        assert shares(first.json) == {"muscat": (3, 0, 0, 0)}
        seq = await s.stream_seq()
        again = await s.request("POST", GLOBAL, json_body=body, headers=key)
        assert (again.status, again.json) == (201, first.json)
        assert await s.stream_seq() == seq
        other = await s.request(
            "POST", GLOBAL, json_body={**body, "max_redemptions": 8}, headers=key
        )
        assert_json_error(other, 409)
        # Without the key, the code is taken: 409, nothing written.
        await refused(s, 409, "POST", GLOBAL, body)

        # Recall: asks the Sovereign back for slots; the pool changes once it answers.
        recall = await s.request(
            "POST", f"{GLOBAL}/{code}/recall", json_body={"sovereign": "salalah", "slots": 10}
        )
        assert recall.status == 200, recall
        assert shares(recall.json)["salalah"] == (25, 0, 3, 10)
        assert recall.json["pool"] == 25
        assert await shown(s, code) == recall.json

        listed = await s.request("GET", f"{GLOBAL}?limit=1")
        assert listed.status == 200, listed
        assert [x["code"] for x in listed.json] == [dcode]  # newest first
        assert listed.headers["X-Total-Count"] == "2"
        everything = await s.request("GET", GLOBAL)
        assert [x["code"] for x in everything.json] == [dcode, code]
        assert everything.json[1] == recall.json

        revoked = await s.request("POST", f"{GLOBAL}/{code}/revoke")
        assert (revoked.status, revoked.json) == (200, {"ok": True})
        seq = await s.stream_seq()
        twice = await s.request("POST", f"{GLOBAL}/{code.lower()}/revoke")
        assert twice.status == 200, twice
        assert await s.stream_seq() == seq  # already revoked: nothing more
        after = await shown(s, code)
        assert after["revoked"] is True
        assert (after["pool"], shares(after)) == (25, shares(recall.json))
        # A revoked code takes no recall.
        await refused(
            s, 409, "POST", f"{GLOBAL}/{code}/recall", {"sovereign": "muscat", "slots": 1}
        )


async def test_bad_global_voucher_requests_are_4xx_and_write_nothing(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    async with shop(tmp_path, nats_url, pg_url, "gbad", HUB="true") as s:
        base = {"code": new_code("GBAD"), "credit_omr": 5, "sovereigns": ["muscat"]}
        no_cap = await refused(s, 400, "POST", GLOBAL, base)
        assert "max_redemptions" in no_cap
        assert "max_redemptions" in await refused(
            s, 400, "POST", GLOBAL, {**base, "max_redemptions": 0}
        )
        await refused(s, 400, "POST", GLOBAL, {**base, "max_redemptions": -1})
        await refused(s, 400, "POST", GLOBAL, {**base, "max_redemptions": "10"})
        capped = {**base, "max_redemptions": 10}
        for bad in ("Muscat", "1muscat", "mus.cat", "", "hub", "hub" * 20, ">"):
            message = await refused(s, 400, "POST", GLOBAL, {**capped, "sovereigns": [bad]})
            assert "sovereigns" in message
        await refused(s, 400, "POST", GLOBAL, {**capped, "sovereigns": "muscat"})
        await refused(s, 400, "POST", GLOBAL, {**capped, "sovereigns": ["muscat", "muscat"]})
        both = await refused(
            s, 400, "POST", GLOBAL, {**capped, "kind": "percent_off", "percent_off": 10}
        )
        assert "credit" in both
        await refused(s, 400, "POST", GLOBAL, {**capped, "credit_omr": 5, "percent_off": 10})
        await refused(s, 400, "POST", GLOBAL, {**capped, "active": False})
        await refused(s, 400, "POST", GLOBAL, {**capped, "code": "A.B"})
        await refused(s, 400, "POST", GLOBAL, {**capped, "max_redemption": 10})
        await refused(s, 400, "POST", GLOBAL, {**capped, "credit_omr": 10**9})
        # A campaign code's shape is the campaign's.
        await refused(s, 400, "POST", GLOBAL, {**capped, "code": "ACEFHJ-2345679ACE"})
        await refused(s, 400, "POST", GLOBAL, [capped])

        # Recall and revoke of a code that is not a global voucher: 404.
        missing = new_code("NONE")
        assert "not found" in await refused(s, 404, "POST", f"{GLOBAL}/{missing}/revoke")
        await refused(
            s, 404, "POST", f"{GLOBAL}/{missing}/recall", {"sovereign": "muscat", "slots": 1}
        )
        await refused(s, 400, "POST", f"{GLOBAL}/A.B/revoke")
        assert_json_error(await s.request("GET", f"{GLOBAL}/{missing}"), 404)
        assert_json_error(await s.request("GET", f"{GLOBAL}/A.B"), 400)
        for query in ("limit=0", "limit=1001", "offset=-1", "limit=x"):
            assert_json_error(await s.request("GET", f"{GLOBAL}?{query}"), 400)
        empty = await s.request("GET", GLOBAL)
        assert (empty.status, empty.json, empty.headers["X-Total-Count"]) == (200, [], "0")

        g = await issue(s, **capped)
        recall = f"{GLOBAL}/{g['code']}/recall"
        # A Sovereign without a share of the code: 400; bad bodies: 400.
        assert "no share" in await refused(
            s, 400, "POST", recall, {"sovereign": "salalah", "slots": 1}
        )
        for body in (
            {"sovereign": "muscat", "slots": 0},
            {"sovereign": "muscat", "slots": 2**31},
            {"sovereign": "muscat", "slots": "1"},
            {"sovereign": "Muscat", "slots": 1},
            {"sovereign": "muscat"},
            {"slots": 1},
            {"sovereign": "muscat", "slots": 1, "extra": 1},
        ):
            await refused(s, 400, "POST", recall, body)

        # Only issuers.
        before = await s.stream_seq()
        member = await s.request("POST", GLOBAL, role="member", json_body=capped)
        assert_json_error(member, 403)
        anonymous = await s.request("POST", f"{GLOBAL}/{g['code']}/revoke", sub=None)
        assert_json_error(anonymous, 401)
        assert_json_error(await s.request("GET", GLOBAL, role="member"), 403)
        assert_json_error(await s.request("GET", f"{GLOBAL}/{g['code']}", sub=None), 401)
        assert await s.stream_seq() == before


async def test_a_serve_that_is_not_the_hub_answers_404_for_global_vouchers(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    async with shop(tmp_path, nats_url, pg_url, "gnot") as s:
        code = new_code("GNOT")
        body = {"code": code, "credit_omr": 5, "max_redemptions": 10, "sovereigns": ["muscat"]}
        for method, path, json_body in (
            ("POST", GLOBAL, body),
            ("POST", f"{GLOBAL}/{code}/revoke", None),
            ("POST", f"{GLOBAL}/{code}/recall", {"sovereign": "muscat", "slots": 1}),
            ("GET", GLOBAL, None),
            ("GET", f"{GLOBAL}/{code}", None),
        ):
            message = await refused(s, 404, method, path, json_body)
            assert "hub" in message
