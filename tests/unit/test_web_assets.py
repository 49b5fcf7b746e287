"""The web pages without a browser: how they are served (CSP, caching, ETag, hashed assets) and
static checks over their sources (every endpoint the JavaScript can call is documented in
/openapi.json; nothing is fetched from another origin; no inline script or style)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from voucher_ledger.config.settings import Settings
from voucher_ledger.http.app import create_app
from voucher_ledger.http.pages import ASSET_TYPES, CSP, PAGE_ROUTES, Pages, build_id
from voucher_ledger.http.routes import build_openapi

WEB = resources.files("voucher_ledger") / "web"
SOURCES = {
    name: (WEB / name).read_text(encoding="utf-8")
    for name in [*ASSET_TYPES, "console.html", "redeem.html"]
}


def settings(**env: str) -> Settings:
    return Settings(JWT_SECRET="u" * 40, **env)  # type: ignore[call-arg]


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    """The real application's routes and middleware, without its components (NATS, Postgres,
    the processors): the page routes never need them."""
    app = create_app(settings(REDEEM_CONTINUE_URL='/plans?from="redeem"&x=<y>'), components=False)
    async with TestClient(TestServer(app)) as c:
        yield c


# ------------------------------------------------------------------------------------ serving


@pytest.mark.parametrize("path", ["/console/", "/redeem"])
async def test_pages_are_html_with_a_strict_policy_and_revalidated(
    client: TestClient[object, object], path: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP
    assert "unsafe-inline" not in CSP
    assert "unsafe-eval" not in CSP
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    body = await resp.text()
    assert "{{" not in body
    etag = resp.headers["ETag"]
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    other = await client.get(path, headers={"If-None-Match": '"something-else"'})
    assert other.status == 200


async def test_assets_are_named_by_their_hash_and_cached_for_a_year(
    client: TestClient[object, object],
) -> None:
    html = await (await client.get("/console/")).text()
    referenced = re.findall(r'(?:src|href)="\.\./(static/[0-9a-f]{16}/[a-z.]+)"', html)
    assert {r.rsplit("/", 1)[1] for r in referenced} == {"favicon.svg", "style.css", "console.js"}
    for ref in referenced:
        resp = await client.get("/" + ref)
        assert resp.status == 200, ref
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.content_type == ASSET_TYPES[ref.rsplit("/", 1)[1]]
    build = referenced[0].split("/")[1]
    # the modules console.js imports sit next to it
    assert (await client.get(f"/static/{build}/api.js")).status == 200
    # another build, an unknown name, a path outside the folder: a JSON 404
    for bad in (
        "/static/0000000000000000/console.js",
        f"/static/{build}/console.html",
        f"/static/{build}/..%2Fsettings.py",
        f"/static/{build}/nope.js",
    ):
        resp = await client.get(bad)
        assert resp.status == 404, bad
        assert await resp.json() == {"error": "not found"}


async def test_console_without_a_slash_redirects_relatively(
    client: TestClient[object, object],
) -> None:
    resp = await client.get("/console", allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == "console/"


async def test_the_continue_url_is_escaped_into_the_redeem_page(
    client: TestClient[object, object],
) -> None:
    html = await (await client.get("/redeem")).text()
    assert (
        '<meta name="continue-url" content="/plans?from=&quot;redeem&quot;&amp;x=&lt;y&gt;">'
        in html
    )


@pytest.mark.parametrize(
    "value", ["javascript:alert(1)", "//evil.example/plans", "plans", "/a b", "data:text/html,x"]
)
def test_the_continue_url_must_be_a_path_or_an_http_url(value: str) -> None:
    with pytest.raises(ValidationError, match="REDEEM_CONTINUE_URL"):
        settings(REDEEM_CONTINUE_URL=value)
    assert settings(REDEEM_CONTINUE_URL="https://shop.example/plans").redeem_continue_url
    assert settings(REDEEM_CONTINUE_URL="/plans").redeem_continue_url == "/plans"


def test_page_routes_are_not_api_operations() -> None:
    documented = {(m, p) for p, ops in build_openapi()["paths"].items() for m in ops}
    assert not documented & PAGE_ROUTES
    assert all(path in {"/", "/console", "/console/", "/redeem"} or path.startswith("/static/")
               for _, path in PAGE_ROUTES)  # fmt: skip


def test_the_build_id_changes_with_any_asset() -> None:
    pages = Pages()
    assert pages.build == build_id(dict(pages.assets))
    changed = {**pages.assets, "style.css": pages.assets["style.css"] + b"/* changed */"}
    renamed = {**pages.assets, "other.css": b""}
    assert len({pages.build, build_id(changed), build_id(renamed)}) == 3


# ------------------------------------------------------------------------------- static checks


def test_every_endpoint_the_pages_can_call_is_documented() -> None:
    api = SOURCES["api.js"]
    table = re.search(r"ENDPOINTS = Object\.freeze\(\{(.*?)\}\);", api, re.S)
    assert table is not None
    entries = re.findall(r'(\w+): \["(GET|POST|DELETE|PUT|PATCH)", "([^"]+)"\]', table.group(1))
    assert len(entries) == 17
    paths = build_openapi()["paths"]
    for _name, method, template in entries:
        assert method.lower() in paths.get("/" + template, {}), (method, template)
    # every call names an entry of the table
    used = set()
    for name in ("console.js", "redeem.js"):
        used |= set(re.findall(r'\bcall\("(\w+)"', SOURCES[name]))
    assert used == {name for name, _, _ in entries}


def test_only_api_js_talks_to_the_network_and_nothing_leaves_the_origin() -> None:
    for name, source in SOURCES.items():
        code = re.sub(r"//[^\n]*|/\*.*?\*/|<!--.*?-->", "", source, flags=re.S)
        if name != "api.js":
            assert "fetch(" not in code, name
            assert "XMLHttpRequest" not in code, name
            assert "billing/" not in code, name
        assert "WebSocket" not in code, name
        assert "sendBeacon" not in code, name
        assert "eval(" not in code, name
        assert "innerHTML" not in code, name
        # the only absolute URL is the SVG namespace (an identifier, never fetched)
        urls = set(re.findall(r"https?://[^\s\"'`)]+", code))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in code, name
        assert "url(" not in code, name


def test_pages_have_no_inline_script_or_style_and_every_asset_exists() -> None:
    for name in ("console.html", "redeem.html"):
        html = SOURCES[name]
        assert "<style" not in html, name
        assert " style=" not in html, name
        assert not re.search(r"\son[a-z]+=", html), name  # no inline event handlers
        for tag in re.findall(r"<script[^>]*>", html):
            assert 'src="{{static}}/' in tag, tag
        assert not re.search(r"<script[^>]*>[^<]+</script>", html), name
        for ref in re.findall(r'"\{\{static\}\}/([^"]+)"', html):
            assert ref in ASSET_TYPES, ref
        assert '<html lang="en">' in html
        # every control has a label (the browser tests check this on the rendered pages too)
        for control in re.findall(r'<(?:input|select|textarea)[^>]*id="([^"]+)"', html):
            assert f'for="{control}"' in html, (name, control)
    for name in ASSET_TYPES:
        imports = re.findall(r'from "\./([^"]+)"', SOURCES[name]) if name.endswith(".js") else []
        assert set(imports) <= set(ASSET_TYPES), (name, imports)
