"""The headers of a list answer: the body stays the seed's plain JSON array; how much there is
goes in ``X-Total-Count`` and the next page in ``Link: <...>; rel="next"`` (RFC 8288).

The link is a relative reference (the last path segment and the query, ``list?limit=50&offset=50``):
resolved against the request's URL it is the same path, so it stays right behind a proxy that
adds a path prefix (the seed's gateway serves the API under ``/api``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

TOTAL_COUNT = "X-Total-Count"

# The response headers of a list operation, for /openapi.json.
LIST_HEADERS: dict[str, Any] = {
    TOTAL_COUNT: {
        "description": "how many items the query matches in all (not only this page)",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Link": {
        "description": 'the next page, as <list?...&offset=N>; rel="next" (relative to the '
        "request's URL); absent on the last page",
        "schema": {"type": "string"},
    },
}


def next_link(request: web.Request, offset: int) -> str:
    """The ``Link`` header value of the page at ``offset``: the same query, that offset."""
    query = [(k, v) for k, v in request.query.items() if k != "offset"]
    query.append(("offset", str(offset)))
    segment = request.path.rstrip("/").rsplit("/", 1)[-1]
    return f'<{segment}?{urlencode(query)}>; rel="next"'


def page_headers(request: web.Request, *, total: int, offset: int, shown: int) -> dict[str, str]:
    """``X-Total-Count``, and ``Link`` when items follow this page's ``shown`` ones."""
    headers = {TOTAL_COUNT: str(total)}
    if shown and offset + shown < total:
        headers["Link"] = next_link(request, offset + shown)
    return headers
