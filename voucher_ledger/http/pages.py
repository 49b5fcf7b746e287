"""The web pages: the issuer console (``/console/``, where ``/`` redirects) and the public redeem
page (``/redeem``).

Static HTML, CSS and vanilla ES modules shipped in ``voucher_ledger/web/`` (no build step, nothing
fetched from the internet). The pages call only the documented REST API; they are pages, not API
operations, so they are not in ``/openapi.json`` (``PAGE_ROUTES`` lists them).

Headers: a strict Content-Security-Policy (``default-src 'self'``, no inline script or style) on
every page; the HTML is revalidated on every load (``no-cache`` with an ETag) and names its assets
under ``static/<build>/``, a hash of their contents, so the assets can be cached for a year.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ASSET_TYPES = {
    "api.js": "text/javascript",
    "ui.js": "text/javascript",
    "console.js": "text/javascript",
    "redeem.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# (method, path) of every page route: the router test adds these to the API's documented routes.
PAGE_ROUTES = {
    ("get", "/"),
    ("get", "/console"),
    ("get", "/console/"),
    ("get", "/redeem"),
    ("get", "/static/{build}/{name}"),
}


def build_id(assets: dict[str, bytes]) -> str:
    """A hash of every asset's name and content: it names the asset folder, so a changed asset
    gets a new URL and a cached one is never stale."""
    digest = hashlib.sha256()
    for name in sorted(assets):
        digest.update(name.encode() + b"\0" + assets[name] + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Page:
    body: bytes
    etag: str


class Pages:
    """The web assets, read once from the package, and the two pages rendered from them."""

    def __init__(self, continue_url: str = "") -> None:
        root = resources.files("voucher_ledger") / "web"
        self.assets = {name: (root / name).read_bytes() for name in ASSET_TYPES}
        self.build = build_id(self.assets)
        self.pages = {
            # Relative links, so the pages also work behind a proxy that adds a path prefix.
            "console": self._render(root / "console.html", "../", continue_url),
            "redeem": self._render(root / "redeem.html", "", continue_url),
        }

    def _render(self, template: resources.abc.Traversable, up: str, continue_url: str) -> Page:
        text = template.read_text(encoding="utf-8")
        text = text.replace("{{static}}", f"{up}static/{self.build}")
        text = text.replace("{{api_root}}", up or "./")
        text = text.replace("{{continue_url}}", html.escape(continue_url, quote=True))
        body = text.encode()
        return Page(body, '"' + hashlib.sha256(body).hexdigest()[:24] + '"')


PAGES = web.AppKey("pages", Pages)


def _page(request: web.Request, name: str) -> web.Response:
    page = request.app[PAGES].pages[name]
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-cache",
        "ETag": page.etag,
    }
    if page.etag in request.headers.getall("If-None-Match", []):
        return web.Response(status=304, headers=headers)
    return web.Response(body=page.body, content_type="text/html", charset="utf-8", headers=headers)


async def console_page(request: web.Request) -> web.Response:
    return _page(request, "console")


async def redeem_page(request: web.Request) -> web.Response:
    return _page(request, "redeem")


async def root_redirect(request: web.Request) -> web.Response:
    """A browser at ``/`` lands on the console (whose sign-in view links to the redeem page).
    302, not 301: what ``/`` shows may change, and a browser caches a 301 for good."""
    raise web.HTTPFound("console/")  # relative: keeps a proxy's path prefix


async def console_redirect(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("console/")  # relative: keeps a proxy's path prefix


async def static_asset(request: web.Request) -> web.Response:
    pages = request.app[PAGES]
    name = request.match_info["name"]
    if request.match_info["build"] != pages.build or name not in ASSET_TYPES:
        raise web.HTTPNotFound()
    return web.Response(
        body=pages.assets[name],
        content_type=ASSET_TYPES[name],
        charset="utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"},
    )


def add_routes(app: web.Application, continue_url: str = "") -> None:
    app[PAGES] = Pages(continue_url)
    app.router.add_get("/", root_redirect)  # and HEAD
    app.router.add_get("/console", console_redirect)
    app.router.add_get("/console/", console_page)
    app.router.add_get("/redeem", redeem_page)
    app.router.add_get("/static/{build}/{name}", static_asset)
