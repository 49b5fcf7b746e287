"""Headless Chromium for the web page tests: the system's Chromium (Debian's ``chromium``) driven
by Playwright, a recorder of every request a page makes (checked against the live
``/openapi.json``), screenshots, and in-page accessibility checks (labels, contrast).

``/usr/bin/chromium`` (or ``VL_CHROMIUM``) must exist. Without it the browser tests skip with the
reason, unless ``VL_REQUIRE_BROWSER=1`` (``.ci/run`` sets it): then they fail."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from voucher_ledger.http.pages import PAGE_ROUTES

CHROMIUM = os.environ.get("VL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
# An untracked folder by default, so a test run leaves the checkout clean; the committed set in
# results/browser/ is refreshed on purpose: VL_BROWSER_RESULTS=results/browser pytest ...
RESULTS = Path(os.environ.get("VL_BROWSER_RESULTS", REPO / "results" / "browser-latest"))
# Chromium logs every 4xx/5xx fetch as a console error; those answers are what the tests ask for.
_EXPECTED_CONSOLE = re.compile(r"^Failed to load resource: the server responded with a status of")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VL_CHROMIUM)"
    return None


def require_browser() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("VL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VL_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


async def launch_browser() -> AsyncIterator[Any]:
    """One headless Chromium (for a module's tests)."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


# --------------------------------------------------------------------- API conformity


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    query: frozenset[str]


def documented_operations(openapi: dict[str, Any]) -> list[Operation]:
    """Every (method, path template, query parameters) in an OpenAPI document."""
    ops = []
    for template, item in openapi["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            query = {p["name"] for p in op.get("parameters", []) if p.get("in") == "query"}
            ops.append(Operation(method.upper(), template, re.compile(regex), frozenset(query)))
    return ops


def page_route(method: str, path: str) -> bool:
    for page_method, template in PAGE_ROUTES:
        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if method == page_method.upper() and re.fullmatch(regex, path):
            return True
    return False


def nonconforming(
    requests: Iterable[tuple[str, str]], origin: str, operations: list[Operation]
) -> list[str]:
    """Why each request is not allowed: another origin, or a same-origin request that is
    neither a page (``PAGE_ROUTES``) nor a documented operation with documented parameters."""
    problems = []
    for method, url in requests:
        parts = urlsplit(url)
        if parts.scheme in {"data", "blob", "about"}:
            problems.append(f"{method} {url}: not served by the service")
            continue
        if f"{parts.scheme}://{parts.netloc}" != origin:
            problems.append(f"{method} {url}: another origin")
            continue
        if page_route(method, parts.path):
            continue
        matches = [o for o in operations if o.method == method and o.pattern.fullmatch(parts.path)]
        if not matches:
            problems.append(f"{method} {parts.path}: not documented in /openapi.json")
            continue
        names = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
        if not any(names <= o.query for o in matches):
            problems.append(f"{method} {parts.path}: undocumented query {sorted(names)}")
    return problems


@dataclass
class Recorder:
    """What one browser context did: requests, responses, console errors."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    responses: list[tuple[str, str, int, dict[str, str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, context: Any) -> None:
        context.on("request", self._request)
        context.on("response", self._response)

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _request(self, request: Any) -> None:
        self.requests.append((request.method, request.url, dict(request.headers)))

    def _response(self, response: Any) -> None:
        self.responses.append(
            (response.request.method, response.url, response.status, dict(response.headers))
        )

    def _console(self, message: Any) -> None:
        if message.type == "error" and not _EXPECTED_CONSOLE.match(message.text):
            self.errors.append(f"console error: {message.text}")

    def calls(self, path_part: str) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.requests if path_part in urlsplit(r[1]).path]


# --------------------------------------------------------------------- screenshots, a11y


async def snap(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot as ``<RESULTS>/<name>.png`` after the accessibility checks
    passed for what is on screen."""
    await assert_accessible(page)
    RESULTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local directory, once
    path = RESULTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


# Every visible form control has an accessible name, and every visible text meets WCAG AA
# contrast against its effective background (4.5:1, or 3:1 for large text).
_AUDIT_JS = (Path(__file__).parent / "a11y_audit.js").read_text(encoding="utf-8")


async def assert_accessible(page: Any) -> int:
    """Labels on every visible control and AA contrast for every visible text; returns how
    many text elements were checked (so a test can see the check saw something)."""
    result = await page.evaluate(_AUDIT_JS)
    assert result["problems"] == [], result["problems"]
    assert result["checked"] > 0
    return int(result["checked"])


async def tab_to(page: Any, selector: str, limit: int = 60, *, backward: bool = False) -> None:
    """Press Tab (or Shift+Tab) until ``selector`` has the focus (only the keyboard moves it)."""
    for _ in range(limit):
        if await page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
        await page.keyboard.press("Shift+Tab" if backward else "Tab")
    focused = await page.evaluate("() => document.activeElement?.outerHTML?.slice(0, 200)")
    raise AssertionError(f"{selector} not reached with {limit} Tab presses; focus on {focused}")
