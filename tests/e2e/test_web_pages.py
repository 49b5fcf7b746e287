"""The web console (/console/) and the public redeem page (/redeem) in headless Chromium, against
a real ``voucher-ledger serve`` on the session's NATS and PostgreSQL.

Two servers for the module: ``shop`` (healthy) and ``degraded`` (no processors and a 1 s command
timeout, so a write really answers 503; the public preview limited to one per minute, so a second
check really answers 429). Every test gets a fresh browser context; every request it makes is
checked against the live /openapi.json (same origin; a page, or a documented operation with
documented query parameters), and no console error (a CSP violation is one) is allowed.
Screenshots of every page and state go to results/browser-latest/ (untracked;
VL_BROWSER_RESULTS chooses another folder, e.g. results/browser for the committed set), after the
accessibility checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.e2e.api_helpers import SECRET, ApiServer, call, running_server
from tests.e2e.browser_helpers import (
    Operation,
    Recorder,
    assert_accessible,
    browser_missing,
    documented_operations,
    launch_browser,
    nonconforming,
    require_browser,
    snap,
    tab_to,
)
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop
from tests.e2e.hub_helpers import observe

_MISSING = browser_missing()
pytestmark = [
    pytest.mark.timeout(180),
    # skip before any server starts; with VL_REQUIRE_BROWSER=1 (CI) the fixtures fail instead
    pytest.mark.skipif(
        _MISSING is not None and os.environ.get("VL_REQUIRE_BROWSER") != "1",
        reason=str(_MISSING),
    ),
]

ISSUE = "/billing/vouchers/issue"
PREVIEW = "/billing/vouchers/redeem-preview"
PENDING_KEY = "sme-pending-voucher"
# The seed's later marketplace reads the pending voucher from this key instead.
ORG_PENDING_KEY = "org-pending-voucher"
TOKEN_KEY = "voucher-ledger.console.token"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
async def store(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Shop]:
    require_browser()  # before a server is started for nothing
    async with shop(
        tmp_path_factory.mktemp("web"), nats_url, pg_url, "web", SOVEREIGN_FQDN="muscat.example"
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def degraded(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    require_browser()
    async with running_server(
        tmp_path_factory.mktemp("web-degraded"),
        nats_url,
        pg_url,
        name="webdeg",
        RUN_PROCESSORS="false",  # no processors anywhere for this prefix: nothing is signed
        LEDGER_SIGNING="false",
        COMMAND_TIMEOUT="1",
        PREVIEW_RATE_PER_MINUTE="1",
        PREVIEW_BURST="1",
    ) as server:
        yield server


@pytest.fixture(scope="module")
async def hub(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Shop]:
    """A hub's serve (issue #22): its console shows the global vouchers."""
    require_browser()
    async with shop(
        tmp_path_factory.mktemp("web-hub"), nats_url, pg_url, "webhub", HUB="true"
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async for b in launch_browser():
        yield b


_OPERATIONS: dict[str, list[Operation]] = {}


async def operations(server: ApiServer) -> list[Operation]:
    if server.base not in _OPERATIONS:
        async with aiohttp.ClientSession() as http:
            reply = await call(http, "GET", server.url("/openapi.json"))
        assert reply.status == 200, reply
        _OPERATIONS[server.base] = documented_operations(reply.json)
    return _OPERATIONS[server.base]


class Browse:
    """A fresh browser context on one server; checks its traffic when the test ends."""

    def __init__(self, browser: Any, server: ApiServer) -> None:
        self.browser = browser
        self.server = server
        self.recorder = Recorder()
        self.context: Any = None

    async def page(self, path: str | None = None) -> Any:
        if self.context is None:
            self.context = await self.browser.new_context(
                viewport={"width": 1200, "height": 800}, locale="en-GB", timezone_id="UTC"
            )
            self.context.set_default_timeout(15_000)
            self.recorder.attach(self.context)
        page = await self.context.new_page()
        self.recorder.watch(page)
        if path is not None:
            await page.goto(self.server.url(path))
        return page

    async def close(self) -> None:
        if self.context is not None:
            await self.context.close()
        assert self.recorder.errors == [], self.recorder.errors
        problems = nonconforming(
            [(m, u) for m, u, _ in self.recorder.requests],
            self.server.base,
            await operations(self.server),
        )
        assert problems == [], problems


@pytest.fixture
async def web(browser: Any, store: Shop) -> AsyncIterator[Browse]:
    b = Browse(browser, store.server)
    yield b
    await b.close()
    RECORDED.extend(b.recorder.requests)


@pytest.fixture
async def web_hub(browser: Any, hub: Shop) -> AsyncIterator[Browse]:
    b = Browse(browser, hub.server)
    yield b
    await b.close()
    RECORDED.extend(b.recorder.requests)


@pytest.fixture
async def web_degraded(browser: Any, degraded: ApiServer) -> AsyncIterator[Browse]:
    b = Browse(browser, degraded)
    yield b
    await b.close()


RECORDED: list[tuple[str, str, dict[str, str]]] = []


# ------------------------------------------------------------------------------------ helpers


def cli_token(tmp: Path, sub: str = "console-admin", role: str = "superadmin") -> str:
    """A token printed by ``voucher-ledger token`` with the server's secret."""
    env = {**os.environ, "JWT_SECRET": SECRET}
    out = subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", "token", "--sub", sub, "--role", role,
         "--data-dir", str(tmp / "token-data")],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


async def sign_in(page: Any, token: str) -> None:
    await page.locator("#view-signin").wait_for()
    await page.fill("#token", token)
    await page.click("#signin-form button[type=submit]")


async def signed_in(b: Browse, path: str = "/console/") -> Any:
    """A console page signed in with an issuer token handed in the fragment."""
    page = await b.page(f"{path}#token={b.server.token()}")
    await page.locator("#session").wait_for()
    return page


async def issue_in_form(page: Any, fields: dict[str, str], active: bool = True) -> None:
    await page.click("#nav-new")
    await page.locator("#view-form").wait_for()
    for selector, value in fields.items():
        await page.fill(selector, value)
    if await page.is_checked("#f-active") != active:
        await page.click("#f-active")


@contextlib.asynccontextmanager
async def list_drawn(page: Any) -> AsyncIterator[None]:
    """Wait for the list the block's action asks for to be answered and drawn."""
    async with page.expect_response(lambda r: "/billing/vouchers/list" in r.url):
        yield
    await page.locator("#counters li").first.wait_for()


async def text(page: Any, selector: str) -> str:
    return " ".join((await page.locator(selector).inner_text()).split())


# ------------------------------------------------------------------------------- the console


async def test_sign_in_with_a_cli_token_then_empty_state(
    web_degraded: Browse, tmp_path: Path
) -> None:
    """A token printed by ``voucher-ledger token`` is pasted; a ledger with no voucher shows the
    empty state. (The degraded server never had a voucher: its writes cannot be decided.)"""
    page = await web_degraded.page("/console/")
    await page.locator("#view-signin").wait_for()
    assert await page.evaluate("() => document.activeElement.id") == "signin-title"
    await snap(page, "console-01-sign-in")
    await sign_in(page, cli_token(tmp_path))
    await page.locator("#list-empty").wait_for()
    assert "No vouchers yet." in await text(page, "#list-empty")
    assert await text(page, "#session-who") == "Signed in as console-admin (superadmin)"
    counters = await page.locator("#counters li").all_inner_texts()
    assert [" ".join(c.split()) for c in counters[:3]] == ["0 Vouchers", "0 Active", "0 Inactive"]
    await snap(page, "console-02-empty")
    # the token went only into the Authorization header, never into a URL
    lists = web_degraded.recorder.calls("/billing/vouchers/list")
    assert lists
    assert all(h["authorization"].startswith("Bearer ey") for _, _, h in lists)
    token = await page.evaluate(f"() => sessionStorage.getItem('{TOKEN_KEY}')")
    assert all(token not in url for _, url, _ in web_degraded.recorder.requests)
    # signing out forgets it
    await page.click("#sign-out")
    await page.locator("#view-signin").wait_for()
    assert await page.evaluate(f"() => sessionStorage.getItem('{TOKEN_KEY}')") is None


async def test_token_handed_in_the_fragment_is_kept_and_removed_from_the_address_bar(
    web: Browse,
) -> None:
    token = web.server.token(sub="handed-over")
    page = await web.page(f"/console/#token={token}")
    await page.locator("#view-list").wait_for()
    assert "token" not in page.url
    assert page.url == web.server.url("/console/")
    assert await page.evaluate(f"() => sessionStorage.getItem('{TOKEN_KEY}')") == token
    assert await text(page, "#session-who") == "Signed in as handed-over (superadmin)"
    assert all(token not in url for _, url, _ in web.recorder.requests)
    # a reload keeps the session (sessionStorage), a new tab in another context does not
    await page.reload()
    await page.locator("#view-list").wait_for()


async def test_issue_list_update_history_chart_and_revoke(web: Browse, store: Shop) -> None:
    code = new_code("WEB")
    page = await signed_in(web)
    await issue_in_form(
        page,
        {"#f-code": f"  {code.lower()} ", "#f-credit": "10", "#f-description": "Launch offer",
         "#f-max": "5"},
    )  # fmt: skip
    await snap(page, "console-03-issue-form")
    await page.click("#form-submit")
    await page.locator("#detail-title", has_text=code).wait_for()
    assert await text(page, "#notice") == f"Voucher {code} issued."
    voucher = await store.voucher(code)
    assert (voucher["credit_omr"], voucher["description"], voucher["max_redemptions"]) == (
        10,
        "Launch offer",
        5,
    )
    assert voucher["active"] is True

    # listed, newest first, with its counters; the search finds it by part of its code
    await page.click("#nav-list")
    row = page.locator(f"#voucher-table tr[data-code='{code}']")
    await row.wait_for()
    first = await page.locator("#voucher-table tbody tr").first.get_attribute("data-code")
    assert first == code
    cells = [" ".join(c.split()) for c in await row.locator("th, td").all_inner_texts()]
    assert cells[:5] == [code, "10 OMR", "Launch offer", "Active", "0 of 5"]
    await snap(page, "console-04-list")
    await page.fill("#search", code[-6:].lower())
    await page.press("#search", "Enter")
    await page.wait_for_url(f"**#/?q={code[-6:].lower()}")
    await page.locator("#voucher-table tbody tr").first.wait_for()
    listed = await page.locator("#voucher-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.code)"
    )
    assert listed == [code]
    await page.fill("#search", "NO-SUCH-CODE-ANYWHERE")
    await page.press("#search", "Enter")
    await page.locator("#list-empty").wait_for()
    assert "No voucher code contains “NO-SUCH-CODE-ANYWHERE”." in await text(page, "#list-empty")

    # update: the form is pre-filled and the code cannot change
    await page.goto(web.server.url(f"/console/#/v/{code}"))
    await page.locator("#detail-edit").click()
    await page.locator("#form-title", has_text=f"Update voucher {code}").wait_for()
    assert await page.input_value("#f-credit") == "10"
    assert await page.locator("#f-code").get_attribute("readonly") is not None
    await page.fill("#f-credit", "12")
    await page.fill("#f-max", "3")
    await page.click("#form-submit")
    await page.locator("#notice", has_text=f"Voucher {code} saved.").wait_for()
    assert (await store.voucher(code))["credit_omr"] == 12

    # two customers redeem it at checkout (12 OMR covers the 9 OMR starter plan)
    for _ in range(2):
        reply = await store.checkout(new_customer(), promo_code=code.lower())
        assert reply.status == 200, reply
        assert reply.json["paid_by_credit"] is True
    await page.reload()
    await page.locator("#redemption-chart").wait_for()
    facts = await text(page, "#facts")
    assert "12 OMR" in facts
    assert "2 of 3" in facts
    assert await page.locator("#redemption-chart circle").count() == 2
    assert (await text(page, "#chart-summary")).startswith("2 redemptions now")
    assert await page.locator("#redemptions-table tbody tr").count() == 2
    history = await page.locator("#history-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.type)"
    )
    assert history == ["voucher.issued", "voucher.issued", "voucher.redeemed", "voucher.redeemed"]
    events = await page.locator("#history-table tbody tr td:nth-child(3)").all_inner_texts()
    assert events == ["Issued", "Updated", "Redeemed", "Redeemed"]
    await snap(page, "console-05-detail-history-chart")

    # revoke: the confirmation can be declined, then confirmed
    await page.click("#detail-revoke")
    dialog = page.locator("#revoke-dialog")
    await dialog.wait_for()
    assert await text(page, "#revoke-title") == f"Revoke voucher {code}?"
    await snap(page, "console-06-revoke-confirmation", full_page=False)  # a modal
    await page.click("#revoke-cancel")
    await dialog.wait_for(state="hidden")
    assert (await store.voucher(code))["revoked"] is False
    await page.click("#detail-revoke")
    await page.click("#revoke-confirm")
    await page.locator("#notice", has_text=f"Voucher {code} revoked.").wait_for()
    await page.locator("#facts .badge-revoked").wait_for()
    assert await page.locator("#detail-revoke").is_hidden()
    assert await text(page, "#detail-edit") == "Restore…"
    types = await page.locator("#history-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.type)"
    )
    assert types[-1] == "voucher.revoked"
    assert (await store.voucher(code))["revoked"] is True
    await snap(page, "console-07-revoked")

    # gone from the live list, shown under the revoked filter
    async with list_drawn(page):
        await page.click("#nav-list")
    # the counter cards: totals of the whole ledger (the API's X-Total-* headers), not the page
    live = await store.request("GET", "/billing/vouchers/list?limit=1")
    total = await page.locator("[data-counter=vouchers] .counter-value").inner_text()
    assert int(total.replace(",", "")) == int(live.headers["X-Total-Count"])
    active = await page.locator("[data-counter=active] .counter-value").inner_text()
    assert int(active.replace(",", "")) == int(live.headers["X-Total-Active"])
    assert await page.locator(f"#voucher-table tr[data-code='{code}']").count() == 0
    async with list_drawn(page):
        await page.select_option("#status-filter", "revoked")
    assert "Revoked" in await text(page, f"#voucher-table tr[data-code='{code}']")
    # the browser used DELETE .../revoke/{code} exactly once (the declined dialog sent nothing)
    revokes = [r for r in web.recorder.calls("/billing/vouchers/revoke/") if r[0] == "DELETE"]
    assert len(revokes) == 1

    # restore: issuing the code again from its page
    await page.click(f"#voucher-table tr[data-code='{code}'] a")
    await page.locator("#detail-edit", has_text="Restore…").click()
    await page.locator("#form-title", has_text=f"Restore voucher {code}").wait_for()
    await page.click("#form-submit")
    await page.locator("#notice", has_text=f"Voucher {code} saved.").wait_for()
    await page.locator("#history-table tr[data-type='voucher.revoked']").wait_for()
    events = await page.locator("#history-table tbody tr td:nth-child(3)").all_inner_texts()
    assert events[-2:] == ["Revoked", "Restored"]
    restored = await store.voucher(code)
    assert (restored["revoked"], restored["times_redeemed"], restored["credit_omr"]) == (
        False,
        2,
        12,
    )


async def test_long_lists_and_histories_are_paged(web: Browse, store: Shop) -> None:
    stem = new_code("PAGE")
    codes = [f"{stem}-{n:02d}" for n in range(51)]
    for code in codes:  # one after another: created_at orders the list
        await store.issue(code, 1)
    page = await signed_in(web)
    async with list_drawn(page):
        await page.goto(web.server.url(f"/console/#/?q={stem}"))
    rows = page.locator("#voucher-table tbody tr")
    assert await rows.count() == 50
    # the counters count every matching voucher, not the 50 of the page
    assert await text(page, "[data-counter=vouchers] .counter-value") == "51"
    assert await text(page, "[data-counter=active] .counter-value") == "51"
    assert await rows.first.get_attribute("data-code") == codes[-1]
    assert await page.locator("#pager-prev").is_hidden()
    async with list_drawn(page):
        await page.click("#pager-next")
    assert await rows.evaluate_all("rows => rows.map(r => r.dataset.code)") == [codes[0]]
    assert await text(page, "#pager-where") == "Page 2"
    assert await page.locator("#pager-next").is_hidden()
    async with list_drawn(page):
        await page.click("#pager-prev")
    assert await rows.count() == 50

    # a history longer than a page: "Show later events" fetches the next one
    busy = codes[0]
    await asyncio.gather(*(store.issue(busy, credit) for credit in range(2, 57)))
    await page.goto(web.server.url(f"/console/#/v/{busy}"))
    history = page.locator("#history-table tbody tr")
    await history.first.wait_for()
    assert await history.count() == 50
    await page.click("#history-more")
    await page.locator("#history-more").wait_for(state="hidden")
    assert await history.count() == 56
    seqs = await history.evaluate_all("rows => rows.map(r => Number(r.dataset.seq))")
    assert seqs == sorted(set(seqs))


BAD_FORMS = [
    # (form fields, the same body sent to the API directly, the field the message is about)
    ({"#f-code": "ok-code-1", "#f-credit": "abc"}, {"code": "ok-code-1", "credit_omr": "abc"},
     "f-credit"),
    ({"#f-code": "ok-code-1", "#f-credit": "0"}, {"code": "ok-code-1", "credit_omr": 0},
     "f-credit"),
    ({"#f-code": "ok-code-1", "#f-credit": ""}, {"code": "ok-code-1"}, "f-credit"),
    ({"#f-code": "a.b", "#f-credit": "5"}, {"code": "a.b", "credit_omr": 5}, "f-code"),
    ({"#f-code": "   ", "#f-credit": "5"}, {"code": "   ", "credit_omr": 5}, "f-code"),
    ({"#f-code": "ok-code-1", "#f-credit": "5", "#f-max": "-1"},
     {"code": "ok-code-1", "credit_omr": 5, "max_redemptions": -1}, "f-max"),
    ({"#f-code": "ok-code-1", "#f-credit": "99999999"},
     {"code": "ok-code-1", "credit_omr": 99999999}, "f-credit"),
]  # fmt: skip


async def api_fields(store: Shop, body: dict[str, Any]) -> dict[str, str]:
    reply = await store.request("POST", ISSUE, json_body=body)
    assert reply.status == 400, reply
    fields: dict[str, str] = reply.json["fields"]
    return fields


def sentence(words: str) -> str:
    return words[:1].upper() + words[1:] + ("" if words.endswith((".", "?", "!")) else ".")


FIELD_INPUTS = {
    "code": "f-code",
    "credit_omr": "f-credit",
    "description": "f-description",
    "max_redemptions": "f-max",
}


async def test_every_field_error_is_shown_at_once_in_plain_words_next_to_its_field(
    web: Browse, store: Shop
) -> None:
    page = await signed_in(web)
    all_at_once = (
        {"#f-code": "a.b", "#f-credit": "abc", "#f-max": "-1"},
        {"code": "a.b", "credit_omr": "abc", "max_redemptions": -1},
        "f-code",
    )
    for fields, body, first in [*BAD_FORMS, all_at_once]:
        expected = await api_fields(store, {"description": "", "active": True, **body})
        await page.goto(web.server.url("/console/#/"))  # a fresh form each time
        await page.locator("#view-list").wait_for()
        await page.goto(web.server.url("/console/#/new"))
        await page.locator("#view-form").wait_for()
        for selector, value in fields.items():
            await page.fill(selector, value)
        await page.click("#form-submit")
        await page.locator("#form-error-list").wait_for()
        # each field the API named: its words next to it, marked invalid, listed in the summary
        assert set(expected) <= set(FIELD_INPUTS), expected
        for name, words in expected.items():
            input_id = FIELD_INPUTS[name]
            assert await page.inner_text(f"#{input_id}-error") == sentence(words), name
            assert await page.get_attribute(f"#{input_id}", "aria-invalid") == "true", name
            listed = await text(page, f"#form-error-list li[data-field={name}]")
            assert listed.endswith(f": {words}"), listed
        for name, input_id in FIELD_INPUTS.items():
            if name not in expected:
                assert await page.locator(f"#{input_id}-error").is_hidden(), name
        # the words are the API's plain ones, not pydantic's ("Input should be ...")
        summary = await text(page, "#form-error")
        assert "Input should" not in summary
        assert "Field required" not in summary
        # the first invalid field has the focus
        assert await page.evaluate("() => document.activeElement.id") == first
        if body.get("credit_omr") == "abc" and len(expected) > 1:
            await snap(page, "console-08-validation-error")
    # nothing was written
    listed = await store.request("GET", "/billing/vouchers/list?q=OK-CODE-1")
    assert listed.json == []
    # the search box too: the API's message for a search that cannot match a code
    bad_search = await store.request("GET", "/billing/vouchers/list?q=a.b")
    assert bad_search.status == 400
    await page.click("#nav-list")
    await page.fill("#search", "a.b")
    await page.press("#search", "Enter")
    await page.locator("#list-error").wait_for()
    assert await page.inner_text("#list-error") == bad_search.json["error"]
    assert await page.get_attribute("#search", "aria-invalid") == "true"


async def test_bad_token_is_a_401_and_a_non_issuer_a_403(web: Browse) -> None:
    page = await web.page("/console/")
    await sign_in(page, "not-a-jwt")
    await page.locator("#signin-error").wait_for()
    message = await text(page, "#signin-error")
    assert message.startswith("The service refused the token (401: ")
    assert await page.get_attribute("#token", "aria-invalid") == "true"
    await snap(page, "console-09-401")
    await sign_in(page, web.server.token(role="member", sub="shopper"))
    await page.locator("#signin-error", has_text="403").wait_for()
    assert (await text(page, "#signin-error")) == (
        "This token may not manage vouchers (403: superadmin or sovereign-admin role "
        "required). Use an issuer's token."
    )
    statuses = [s for _, url, s, _ in web.recorder.responses if "/billing/vouchers/list" in url]
    assert statuses == [401, 403]
    assert await page.locator("#loading").is_hidden()
    await snap(page, "console-10-403")


async def test_a_failing_service_shows_a_banner_and_writes_nothing(web_degraded: Browse) -> None:
    page = await signed_in(web_degraded)
    code = new_code("DOWN")
    await issue_in_form(page, {"#f-code": code, "#f-credit": "5"})
    await page.click("#form-submit")
    await page.locator("#banner").wait_for()
    banner = await text(page, "#banner-text")
    assert banner.startswith("The service could not save the voucher (503: ")
    assert "Try again in 1 second." in banner
    await snap(page, "console-11-503")
    # "Try again" sends the same save with the same Idempotency-Key; the form keeps its values
    async with page.expect_response(lambda r: r.url.endswith(ISSUE)) as answer:
        await page.click("#banner-retry")
    assert (await answer.value).status == 503
    await page.locator("#banner").wait_for()
    saves = [h for m, _, h in web_degraded.recorder.calls(ISSUE) if m == "POST"]
    assert len(saves) == 2
    assert saves[0]["idempotency-key"] == saves[1]["idempotency-key"]
    assert saves[0]["idempotency-key"].startswith("console-")
    assert await page.input_value("#f-code") == code
    # another body is another save: a new key
    await page.fill("#f-credit", "6")
    async with page.expect_response(lambda r: r.url.endswith(ISSUE)) as answer:
        await page.click("#form-submit")
    assert (await answer.value).status == 503
    await page.locator("#banner").wait_for()
    saves = [h for m, _, h in web_degraded.recorder.calls(ISSUE) if m == "POST"]
    assert len(saves) == 3
    assert saves[2]["idempotency-key"] != saves[0]["idempotency-key"]
    # an unknown voucher's page is an empty state, not an error
    await page.goto(web_degraded.server.url("/console/#/v/NOPE-404"))
    await page.locator("#detail-empty").wait_for()
    assert await text(page, "#detail-empty") == "There is no voucher NOPE-404. Back to the vouchers"
    await snap(page, "console-12-unknown-voucher")


async def test_keyboard_only_issue_and_revoke(web: Browse, store: Shop) -> None:
    code = new_code("KEY")
    page = await signed_in(web)
    await page.locator("#list-title").wait_for()
    # the view's heading has the focus after a navigation; the menu is behind it
    assert await page.evaluate("() => document.activeElement.id") == "list-title"
    await tab_to(page, "#nav-new", backward=True)
    await page.keyboard.press("Enter")
    await page.locator("#view-form").wait_for()
    await tab_to(page, "#f-code")
    await page.keyboard.type(code)
    await page.keyboard.press("Tab")
    # issue #21: what the voucher gives (credit, the default, or a discount) comes first
    assert await page.evaluate("() => document.activeElement.id") == "f-kind"
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.id") == "f-credit"
    await page.keyboard.type("7")
    await page.keyboard.press("Tab")
    await page.keyboard.type("Typed with the keyboard")
    await page.keyboard.press("Tab")
    await page.keyboard.type("2")
    await page.keyboard.press("Tab")
    # issue #20: the window and the eligibility rules come next, left empty here
    assert await page.evaluate("() => document.activeElement.id") == "f-starts"
    await tab_to(page, "#f-active")
    await page.keyboard.press("Space")  # issue it inactive
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.id") == "form-submit"
    await page.keyboard.press("Enter")
    await page.locator("#detail-title", has_text=code).wait_for()
    voucher = await store.voucher(code)
    assert (voucher["credit_omr"], voucher["max_redemptions"], voucher["active"]) == (7, 2, False)
    assert voucher["description"] == "Typed with the keyboard"

    # revoke with the keyboard: Escape declines, focus returns to the button
    await tab_to(page, "#detail-revoke")
    await page.keyboard.press("Enter")
    await page.locator("#revoke-dialog").wait_for()
    assert await page.evaluate("() => document.activeElement.id") == "revoke-cancel"
    await page.keyboard.press("Escape")
    await page.locator("#revoke-dialog").wait_for(state="hidden")
    assert await page.evaluate("() => document.activeElement.id") == "detail-revoke"
    assert (await store.voucher(code))["revoked"] is False
    await page.keyboard.press("Enter")
    await page.locator("#revoke-dialog").wait_for()
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.id") == "revoke-confirm"
    await page.keyboard.press("Enter")
    await page.locator("#notice", has_text=f"Voucher {code} revoked.").wait_for()
    assert (await store.voucher(code))["revoked"] is True


async def test_a_discount_voucher_issued_in_the_console_and_read_on_the_redeem_page(
    web: Browse, store: Shop
) -> None:
    """Issue #21: the console issues a discount ("20% off add-ons for 3 months"); the list, the
    detail and the public redeem page say what it gives in words."""
    code = new_code("ADDONS")
    page = await signed_in(web)
    await page.click("#nav-new")
    await page.locator("#view-form").wait_for()
    assert await page.is_visible("#f-credit")
    assert not await page.is_visible("#f-percent")
    await page.fill("#f-code", code)
    await page.select_option("#f-kind", "percent_off")
    assert not await page.is_visible("#f-credit")
    await page.fill("#f-percent", "20")
    await page.check("#f-applies-addons")
    await page.fill("#f-duration", "P3M")
    await page.fill("#f-description", "Spring add-ons")
    await snap(page, "console-15-discount-form")
    await page.click("#form-submit")
    await page.locator("#view-detail").wait_for()
    await page.locator("#detail-discount").wait_for()
    assert await text(page, "#detail-discount") == "20% off add-ons for 3 months"
    await snap(page, "console-16-discount-detail")
    made = await store.voucher(code)
    assert (made["kind"], made["percent_off"], made["applies_to"], made["duration"]) == (
        "percent_off",
        20,
        ["addons"],
        "P3M",
    )
    # the edit form shows it as issued
    await page.click("#detail-edit")
    await page.locator("#form-title", has_text=f"Update voucher {code}").wait_for()
    assert await page.input_value("#f-kind") == "percent_off"
    assert await page.input_value("#f-percent") == "20"
    assert await page.is_checked("#f-applies-addons")
    assert await page.input_value("#f-duration") == "P3M"

    redeem = await web.page(f"/redeem?code={code}")
    await redeem.locator("#outcome[data-outcome=valid]").wait_for()
    assert await text(redeem, "#outcome .amount") == "20% off add-ons for 3 months"
    await snap(redeem, "redeem-11-discount")


# ---------------------------------------------------------------------------- the redeem page


async def test_redeem_a_valid_code_and_keep_it_for_checkout(web: Browse, store: Shop) -> None:
    code = new_code("HELLO")
    reply = await store.request(
        "POST", ISSUE, json_body={"code": code, "credit_omr": 25, "description": "Welcome gift"}
    )
    assert reply.status == 200, reply
    page = await web.page(f"/redeem?code=%20{code.lower()}%20")
    await page.locator("#outcome[data-outcome=valid]").wait_for()
    assert await text(page, "#result-title") == f"{code} is valid"
    assert await text(page, "#outcome .amount") == "25 OMR credit"
    assert await text(page, "#outcome .description") == "Welcome gift"
    await snap(page, "redeem-01-valid")
    await page.click("#use-code")
    await page.locator("#saved").wait_for()
    assert await page.evaluate(f"() => localStorage.getItem('{PENDING_KEY}')") == code
    assert await page.evaluate(f"() => localStorage.getItem('{ORG_PENDING_KEY}')") == code
    await snap(page, "redeem-02-saved-for-checkout")
    await page.set_viewport_size({"width": 390, "height": 844})
    await snap(page, "redeem-07-phone")
    # the preview went out trimmed and upper-cased, without any Authorization header
    previews = [r for r in web.recorder.calls(PREVIEW) if r[0] == "POST"]
    assert len(previews) == 1
    assert "authorization" not in previews[0][2]


async def test_redeem_an_ended_campaign(web: Browse, store: Shop) -> None:
    inactive = new_code("ENDED")
    full = new_code("FULL")
    for body in (
        {"code": inactive, "credit_omr": 30, "active": False},
        {"code": full, "credit_omr": 9, "max_redemptions": 1},
    ):
        reply = await store.request("POST", ISSUE, json_body=body)
        assert reply.status == 200, reply
    reply = await store.checkout(new_customer(), promo_code=full)
    assert reply.status == 200, reply
    page = await web.page(f"/redeem?code={inactive}")
    await page.locator("#outcome[data-outcome=ended]").wait_for()
    assert await text(page, "#result-title") == "This campaign has ended"
    ended = f"{inactive} (30 OMR credit) no longer accepts redemptions."
    assert await text(page, "#outcome p") == ended
    await snap(page, "redeem-03-campaign-ended")
    await page.goto(web.server.url(f"/redeem?code={full}"))
    await page.locator("#outcome[data-outcome=ended]").wait_for()
    assert full in await text(page, "#outcome p")
    assert await page.locator("#use-code").count() == 0
    statuses = [s for _, url, s, _ in web.recorder.responses if url.endswith(PREVIEW)]
    assert statuses == [410, 410]


async def test_redeem_says_valid_until_ended_on_and_starts_on(web: Browse, store: Shop) -> None:
    """Issue #20: the landing page tells a window's edges from the preview's 410 reason."""
    until, ended, later = new_code("UNTIL"), new_code("PAST"), new_code("SOON")
    for body in (
        {"code": until, "credit_omr": 5, "expires_at": "2099-03-01T10:00:00Z"},
        {"code": ended, "credit_omr": 6, "expires_at": "2021-03-01T10:00:00Z"},
        {"code": later, "credit_omr": 7, "starts_at": "2098-05-01T10:00:00Z"},
    ):
        reply = await store.request("POST", ISSUE, json_body=body)
        assert reply.status == 200, reply
    page = await web.page(f"/redeem?code={until}")
    await page.locator("#outcome[data-outcome=valid]").wait_for()
    valid = await text(page, "#valid-until")
    assert valid.startswith("Valid until "), valid
    assert "2099" in valid, valid
    assert await page.locator("#use-code").count() == 1
    await snap(page, "redeem-08-valid-until")
    await page.goto(web.server.url(f"/redeem?code={ended}"))
    await page.locator("#outcome[data-outcome=ended]").wait_for()
    assert await text(page, "#result-title") == "This campaign has ended"
    ended_on = await text(page, "#ended-on")
    assert ended_on.startswith(f"{ended} (6 OMR credit) ended on ")
    assert "2021" in ended_on
    await snap(page, "redeem-09-ended-on")
    await page.goto(web.server.url(f"/redeem?code={later}"))
    await page.locator("#outcome[data-outcome=scheduled]").wait_for()
    assert await text(page, "#result-title") == "This code is not valid yet"
    starts = await text(page, "#starts-on")
    assert starts.startswith(f"{later} (7 OMR credit) starts on ")
    assert "2098" in starts
    assert await page.locator("#use-code").count() == 0
    await snap(page, "redeem-10-starts-on")


async def test_the_form_edits_the_window_and_rules_in_the_issuers_time_zone(
    web: Browse, store: Shop
) -> None:
    """Issue #20: the console's form sets, shows and clears a voucher's window (entered in
    the issuer's time zone), its credit's lifetime and who may redeem it."""
    code = new_code("RULES")
    page = await signed_in(web)
    await issue_in_form(
        page,
        {"#f-code": code, "#f-credit": "4", "#f-starts": "2031-01-02T03:04:05",
         "#f-expires": "2031-02-03T04:05:06", "#f-valid-for": "P30D",
         "#f-plans": "business, enterprise", "#f-min-order": "12"},
    )  # fmt: skip
    await page.click("#f-new-orgs")
    assert await text(page, "#f-tz")  # the zone the times are read in is named
    await snap(page, "console-13-issue-form-rules")
    await page.click("#form-submit")
    await page.locator("#detail-title", has_text=code).wait_for()
    # what the browser sent: the local times as instants
    starts = await page.evaluate("() => new Date('2031-01-02T03:04:05').toISOString()")
    expires = await page.evaluate("() => new Date('2031-02-03T04:05:06').toISOString()")
    voucher = await store.voucher(code)
    assert voucher["starts_at"] == starts.replace(".000Z", "Z")
    assert voucher["expires_at"] == expires.replace(".000Z", "Z")
    assert (voucher["plans"], voucher["min_order_omr"], voucher["credit_valid_for"]) == (
        ["business", "enterprise"],
        12,
        "P30D",
    )
    assert voucher["new_organizations_only"] is True
    facts = await text(page, "#facts")
    for shown in ("Plans business, enterprise", "Minimum order 12 OMR", "Credit lasts P30D"):
        assert shown in facts, facts
    assert "2031" in facts
    await snap(page, "console-14-detail-rules")

    # the form is pre-filled in the same zone; emptied fields clear the rules
    await page.locator("#detail-edit").click()
    await page.locator("#form-title", has_text=f"Update voucher {code}").wait_for()
    assert await page.input_value("#f-starts") == "2031-01-02T03:04:05"
    assert await page.input_value("#f-plans") == "business, enterprise"
    for selector in ("#f-expires", "#f-plans", "#f-min-order", "#f-valid-for"):
        await page.fill(selector, "")
    await page.click("#f-new-orgs")
    await page.click("#form-submit")
    await page.locator("#notice").wait_for()
    voucher = await store.voucher(code)
    assert voucher["starts_at"] == starts.replace(".000Z", "Z")
    assert (voucher["expires_at"], voucher["plans"], voucher["credit_valid_for"]) == (
        None,
        None,
        None,
    )
    assert (voucher["min_order_omr"], voucher["new_organizations_only"]) == (0, False)


async def test_redeem_an_unknown_revoked_or_malformed_code(web: Browse, store: Shop) -> None:
    revoked = new_code("GONE")
    await store.issue(revoked, 3)
    assert (await store.request("DELETE", f"/billing/vouchers/revoke/{revoked}")).status == 200
    page = await web.page("/redeem?code=NOT-A-REAL-CODE")
    await page.locator("#outcome[data-outcome=invalid]").wait_for()
    assert await text(page, "#result-title") == "This code is not valid"
    await snap(page, "redeem-04-not-valid")
    await page.goto(web.server.url(f"/redeem?code={revoked}"))
    await page.locator("#outcome[data-outcome=invalid]").wait_for()
    assert revoked in await text(page, "#outcome p")
    await page.goto(web.server.url("/redeem?code=a.b"))
    await page.locator("#outcome[data-outcome=invalid]").wait_for()
    api = await store.request("POST", PREVIEW, sub=None, json_body={"code": "A.B"})
    assert (api.status, api.json) == (404, {"error": "voucher not valid"})  # cannot exist
    shown = await text(page, "#outcome p")
    assert shown == "There is no voucher A.B. Check the spelling and try again."
    statuses = [s for _, url, s, _ in web.recorder.responses if url.endswith(PREVIEW)]
    assert statuses == [404, 404, 404]
    for key in (PENDING_KEY, ORG_PENDING_KEY):
        assert await page.evaluate(f"() => localStorage.getItem('{key}')") is None


async def test_redeem_manual_entry(web: Browse, store: Shop) -> None:
    code = new_code("TYPED")
    await store.issue(code, 4)
    page = await web.page("/redeem")
    await page.locator("#redeem-form").wait_for()
    assert await page.locator("#outcome").count() == 0
    assert await text(page, "#form-heading") == "Enter your voucher code"
    await snap(page, "redeem-05-manual-entry")
    # empty: a message, no request
    await page.click("#check")
    await page.locator("#form-error", has_text="Enter a voucher code.").wait_for()
    assert await page.get_attribute("#code", "aria-invalid") == "true"
    assert web.recorder.calls(PREVIEW) == []
    # keyboard only: type, Enter; the code is upper-cased into ?code= and checked
    await tab_to(page, "#code")
    await page.keyboard.type(f" {code.lower()} ")
    await page.keyboard.press("Enter")
    await page.locator("#outcome[data-outcome=valid]").wait_for()
    assert page.url == web.server.url(f"/redeem?code={code}")
    assert await page.evaluate("() => document.activeElement.id") == "result-title"
    # back: the manual entry form again
    await page.go_back()
    await page.locator("#outcome").wait_for(state="detached")
    assert await text(page, "#form-heading") == "Enter your voucher code"


async def test_redeem_rate_limited_says_when_to_retry(web_degraded: Browse) -> None:
    page = await web_degraded.page("/redeem?code=FIRST-TRY")
    await page.locator("#outcome[data-outcome=invalid]").wait_for()
    await page.fill("#code", "second-try")
    await page.press("#code", "Enter")
    await page.locator("#outcome[data-outcome=limited]").wait_for()
    limited = [
        h for _, url, s, h in web_degraded.recorder.responses if url.endswith(PREVIEW) and s == 429
    ]
    assert len(limited) == 1
    retry = int(limited[0]["retry-after"])
    assert 1 <= retry <= 60
    assert await text(page, "#outcome p") == (
        f"Codes were checked too often from this address. Try again in {retry} seconds."
    )
    await snap(page, "redeem-06-rate-limited")


# ------------------------------------------------------------------------------ the whole run


async def test_campaigns_create_generate_download_and_revoke(
    web: Browse, store: Shop, tmp_path: Path
) -> None:
    """Issue #21: a campaign made in the console, its codes generated, two redeemed at
    checkout, its page against its cap and budget, the CSV downloaded, then revoked."""
    page = await signed_in(web)
    await page.click("#nav-campaigns")
    await page.locator("#view-campaigns").wait_for()
    await page.locator("#campaign-form").wait_for()
    name = f"Omantel inserts {new_code('W')[-4:]}"
    for selector, value in {
        "#c-name": name,
        "#c-description": "Printed on mobile bills",
        "#c-credit": "10",
        "#c-max": "2",
        "#c-budget": "30",
    }.items():
        await page.fill(selector, value)
    await snap(page, "console-campaigns-01-new")
    await page.click("#campaign-submit")
    await page.locator("#campaign-title", has_text=name).wait_for()
    campaign_id = urlsplit(page.url).fragment.rsplit("/", 1)[-1]
    assert f"({campaign_id})" in await text(page, "#campaign-title")
    assert "Generate its codes below" in await text(page, "#notice")

    # a bad count is refused in words, nothing generated
    await page.fill("#g-count", "0")
    await page.click("#generate-submit")
    await page.locator("#generate-error").wait_for()
    assert "count" in await text(page, "#generate-error")
    await page.fill("#g-count", "25")
    await page.fill("#g-prefix", "oman")
    await page.click("#generate-submit")
    await page.locator("#generated-codes li").nth(9).wait_for()
    codes = await page.locator("#generated-codes li").all_inner_texts()
    assert all(c.startswith(f"OMAN-{campaign_id}-") for c in codes)
    assert "25 new codes" in await text(page, "#generated-count")
    await snap(page, "console-campaigns-02-generated")

    # two Organizations redeem at checkout: the campaign is at its cap
    for i, code in enumerate(codes[:2]):
        reply = await store.checkout(new_customer(f"web-camp{i}"), promo_code=code)
        assert reply.status == 200, reply
    await page.reload()
    await page.locator("#campaign-chart").wait_for()
    assert await text(page, "#meter-cap-text") == "2 of 2"
    assert await text(page, "#meter-budget-text") == "20 OMR of 30 OMR"
    assert await page.locator("#meter-cap").get_attribute("value") == "2"
    assert "Not redeeming" in await text(page, "#campaign-facts")
    assert "2 by" in await text(page, "#campaign-chart-summary")
    await snap(page, "console-campaigns-03-campaign")

    # a redeemed code reads like a voucher: its campaign's events for it, its redemption
    await page.goto(web.server.url(f"/console/#/v/{codes[0]}"))
    await page.locator("#history-table tbody tr").nth(2).wait_for()
    kinds = await page.locator("#history-table tbody tr .event").all_inner_texts()
    assert kinds == ["Campaign created", "Generated", "Redeemed"]
    assert "web-camp0" in await text(page, "#redemptions-table")
    # edited and revoked with its campaign, which it links to
    assert await page.locator("#detail-edit").is_hidden()
    assert await page.locator("#detail-revoke").is_hidden()
    await snap(page, "console-campaigns-06-code")
    await page.click("#detail-campaign")
    await page.locator("#campaign-chart").wait_for()

    # the CSV: every code, the two redeemed by their Organizations
    async with page.expect_download() as download_info:
        await page.click("#campaign-csv")
    download = await download_info.value
    assert download.suggested_filename == f"campaign-{campaign_id}-codes.csv"
    saved = tmp_path / "codes.csv"
    await download.save_as(saved)
    lines = saved.read_text().splitlines()
    assert lines[0] == "code,status,redeemed_by,redeemed_at"
    assert len(lines) == 26
    assert sum(",redeemed,web-camp" in line for line in lines) == 2

    # revoked: the campaign's codes no longer preview
    await page.click("#campaign-revoke")
    await page.locator("#campaign-revoke-dialog[open]").wait_for()
    await snap(page, "console-campaigns-04-revoke", full_page=False)
    await page.click("#campaign-revoke-confirm")
    await page.locator("#notice", has_text="revoked").wait_for()
    assert "Revoked" in await text(page, "#campaign-facts")
    preview = await store.request("POST", PREVIEW, sub=None, json_body={"code": codes[5]})
    assert preview.status == 404, preview

    await page.click("#nav-campaigns")
    row = page.locator(f"#campaign-table tr[data-campaign='{campaign_id}']")
    await row.wait_for()
    cells = [" ".join(c.split()) for c in await row.locator("th, td").all_inner_texts()]
    assert cells[:7] == [name, campaign_id, "10 OMR", "25", "2 of 2", "20 OMR of 30 OMR", "Revoked"]
    await snap(page, "console-campaigns-05-list")


async def test_reports_show_each_campaign_by_window_and_download_the_csv(
    web: Browse, store: Shop, tmp_path: Path
) -> None:
    """Issue #21: the Reports page shows a campaign's figures (a code redeemed at a checkout
    paid by credit alone), the window filters them, and the CSV downloads with the Sovereign
    as a column."""
    made = await store.request(
        "POST", "/billing/campaigns", json_body={"name": "Bill inserts", "credit_omr": 20}
    )
    assert made.status == 200, made
    campaign_id = made.json["campaign_id"]
    generated = await store.request(
        "POST", f"/billing/campaigns/{campaign_id}/codes", json_body={"count": 5}
    )
    assert generated.status == 200, generated
    paid = await store.checkout(
        new_customer("web-rep"), "starter", promo_code=generated.json["codes"][0]
    )
    assert (paid.status, paid.json["paid_by_credit"]) == (200, True), paid

    page = await signed_in(web)
    await page.click("#nav-reports")
    row = page.locator(f"#report-table tr[data-line='{campaign_id}']")
    await row.wait_for()
    cells = [" ".join(c.split()) for c in await row.locator("th, td").all_inner_texts()]
    assert cells == [
        f"Bill inserts ({campaign_id})",
        "5",
        "1",
        "20.000 OMR",
        "9.000 OMR",
        "0.000 OMR",
        "0.000 OMR",
        "1",
        "0.000 OMR",
    ]
    assert "muscat.example" in await text(page, "#report-table tfoot")
    await snap(page, "console-reports-01-all")

    # a window in the past: the campaign is listed, with nothing in it
    await page.fill("#r-from", "2020-01-01")
    await page.fill("#r-to", "2020-02-01")
    # the table shown now is marked, so the wait below is for the window's table
    await page.eval_on_selector("#report-table", "t => t.setAttribute('data-stale', '')")
    await page.click("#reports-submit")
    await page.wait_for_function("location.hash.includes('from=2020-01-01')")
    await page.locator("#report-table:not([data-stale])").wait_for()
    await row.wait_for()
    cells = [" ".join(c.split()) for c in await row.locator("td").all_inner_texts()]
    assert cells == ["0", "0", *["0.000 OMR"] * 4, "0", "0.000 OMR"]
    await snap(page, "console-reports-02-window")

    # the CSV of the window shown, one line per row and the totals, the Sovereign a column
    async with page.expect_download() as download_info:
        await page.click("#reports-csv")
    download = await download_info.value
    assert download.suggested_filename == "campaign-report-from-2020-01-01-to-2020-02-01.csv"
    saved = tmp_path / "report.csv"
    await download.save_as(saved)
    lines = saved.read_text().splitlines()
    assert lines[0].startswith("sovereign,scope,campaign_id,name,codes_issued,redemptions,")
    assert any(line.startswith(f"muscat.example,campaign,{campaign_id},") for line in lines)
    assert lines[-1].startswith("muscat.example,sovereign,,muscat.example,0,0,")


async def test_global_vouchers_at_the_hub_per_sovereign_with_recall_and_revoke(
    web: Browse, web_hub: Browse, hub: Shop
) -> None:
    """Issue #22: a serve that is not the hub has no Global vouchers page in its navigation;
    the hub's shows each global code's cap used across the Sovereigns, each Sovereign's
    allotted, used, unused and released slots and the pool, asks a Sovereign for slots back
    (a bad count refused in words) and revokes a code everywhere."""
    elsewhere = await signed_in(web)
    async with elsewhere.expect_response(lambda r: "/billing/global-vouchers" in r.url) as probe:
        await elsewhere.reload()
    assert (await probe.value).status == 404
    await elsewhere.locator("#view-list").wait_for()
    assert await elsewhere.locator("#nav-globals-item").is_hidden()

    code, other = new_code("WORLD"), new_code("GOFF")
    for body in (
        {"code": code, "credit_omr": 25, "max_redemptions": 100,
         "description": "OpenOva launch, every Sovereign", "sovereigns": ["muscat", "salalah"]},
        {"code": other, "kind": "percent_off", "percent_off": 20, "duration": "P3M",
         "max_redemptions": 8, "sovereigns": ["muscat"]},
    ):  # fmt: skip
        made = await hub.request("POST", "/billing/global-vouchers", json_body=body)
        assert made.status == 201, made
    # what the hub's allocator reports from its trail: muscat used 20 (topped up), salalah 3
    await observe(hub.server, code, "muscat", 5, 20)
    await observe(hub.server, code, "salalah", 6, 3)

    page = await signed_in(web_hub)
    await page.locator("#nav-globals-item").wait_for()
    await page.click("#nav-globals")
    panel = page.locator(f"#global-{code}")
    await panel.wait_for()
    assert await page.locator("#nav-globals").get_attribute("aria-current") == "page"
    assert await page.locator("section.panel.global").evaluate_all(
        "els => els.map(e => e.dataset.code)"
    ) == [other, code]  # newest first
    assert await text(page, f"#global-{code}-meter-text") == "23 of 100"
    assert await page.locator(f"#global-{code}-meter").get_attribute("value") == "23"
    rows = page.locator(f"#global-{code}-shares tbody tr")
    cells = [[" ".join(c.split()) for c in await rows.nth(i).locator("th, td").all_inner_texts()]
             for i in range(await rows.count())]  # fmt: skip
    assert cells == [
        ["muscat", "50", "20", "30", "0", "0"],
        ["salalah", "25", "3", "22", "0", "0"],
    ]
    assert await text(page, f"#global-{code}-pool") == "25"
    assert "20% off" in await text(page, f"#global-{other}")
    await snap(page, "console-globals-01-hub")

    # recall: a bad count is refused in words in the dialog, nothing asked
    await panel.locator("button.recall").click()
    await page.locator("#recall-dialog[open]").wait_for()
    await page.select_option("#recall-sovereign", "salalah")
    await page.fill("#recall-slots", "0")
    await page.click("#recall-confirm")
    await page.locator("#recall-error").wait_for()
    assert "slots" in await text(page, "#recall-error")
    await page.fill("#recall-slots", "10")
    await snap(page, "console-globals-02-recall", full_page=False)
    await page.click("#recall-confirm")
    await page.locator("#notice", has_text="Asked salalah for 10 slots").wait_for()
    salalah = page.locator(f"#global-{code}-shares tr[data-sovereign='salalah'] td")
    await page.locator(f"#global-{code}-shares").wait_for()
    assert [" ".join(c.split()) for c in await salalah.all_inner_texts()] == [
        "25", "3", "22", "0", "10",
    ]  # fmt: skip
    shown = await hub.request("GET", f"/billing/global-vouchers/{code}")
    assert [x["requested"] for x in shown.json["sovereigns"]] == [0, 10]

    # revoke everywhere, after a confirmation
    await page.locator(f"#global-{other} button.revoke-global").click()
    await page.locator("#global-revoke-dialog[open]").wait_for()
    await snap(page, "console-globals-03-revoke", full_page=False)
    await page.click("#global-revoke-confirm")
    await page.locator("#notice", has_text=f"{other} revoked").wait_for()
    await page.locator(f"#global-{other} .badge-revoked").wait_for()
    assert await page.locator(f"#global-{other} button").count() == 0
    revoked = await hub.request("GET", f"/billing/global-vouchers/{other}")
    assert revoked.json["revoked"] is True
    await snap(page, "console-globals-04-revoked")


async def test_the_browser_used_the_documented_operations(store: Shop) -> None:
    """Run after the browser tests: each test already checked that its requests were documented;
    this checks the recording really saw the console and the redeem page at work."""
    if not RECORDED:
        pytest.skip("no browser test on the healthy server ran in this session")
    ops = await operations(store.server)
    used = set()
    for method, url, _ in RECORDED:
        path = urlsplit(url).path
        used |= {
            (o.method, o.template) for o in ops if o.method == method and o.pattern.fullmatch(path)
        }
    assert used == {
        ("POST", "/billing/vouchers/issue"),
        ("GET", "/billing/vouchers/list"),
        ("GET", "/billing/vouchers/{code}"),
        ("GET", "/billing/vouchers/{code}/history"),
        ("GET", "/billing/vouchers/{code}/redemptions"),
        ("DELETE", "/billing/vouchers/revoke/{code}"),
        ("POST", "/billing/vouchers/redeem-preview"),
        ("GET", "/billing/campaigns"),
        ("POST", "/billing/campaigns"),
        ("GET", "/billing/campaigns/{campaign_id}"),
        ("POST", "/billing/campaigns/{campaign_id}/codes"),
        ("GET", "/billing/campaigns/{campaign_id}/codes.csv"),
        ("DELETE", "/billing/campaigns/{campaign_id}"),
        ("GET", "/billing/reports/campaigns"),
        ("GET", "/billing/global-vouchers"),
        ("POST", "/billing/global-vouchers/{code}/recall"),
        ("POST", "/billing/global-vouchers/{code}/revoke"),
    }


async def test_the_accessibility_checks_catch_a_missing_label_and_low_contrast(
    browser: Any,
) -> None:
    """The in-page checks can fail: an unlabeled input and grey-on-white text are reported."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.set_content(
            '<body style="background:#fff"><input id="x"><p style="color:#bbb">faint</p></body>'
        )
        with pytest.raises(AssertionError) as failure:
            await assert_accessible(page)
        assert "no accessible name: input#x" in str(failure.value)
        assert 'contrast 1.92 for "faint"' in str(failure.value)
    finally:
        await context.close()
