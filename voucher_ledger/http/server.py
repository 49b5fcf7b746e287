"""The HTTP server runner: aiohttp's ``AppRunner`` with JSON answers to malformed requests.

aiohttp 3.x answers a request its parser refuses (control characters in a header line, a bad
request line, an over-long line, a broken chunked body, an unknown content encoding) before any
middleware runs: ``RequestHandler.handle_error`` sends a ``text/plain`` 400 that quotes the
offending line, and logs that line with a traceback at ERROR level. The line may be an
``Authorization: Bearer ...`` header, so both the answer and the log would carry a token.

Here those answers are ``{"error": "malformed HTTP request"}`` with the parser's 4xx status,
and the log line names only the client address and the exception class. aiohttp has no public
hook for this (aio-libs/aiohttp#3287; from aiohttp 4 parser errors go through the middleware
instead, which already answers JSON), so the runner swaps in a protocol class that overrides
``handle_error``. On aiohttp 4 the stock server is kept.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)

MALFORMED = "malformed HTTP request"
_AIOHTTP_3 = aiohttp.__version__.startswith("3.")


class _Protocol(RequestHandler):
    """One connection: aiohttp's own, except for how a parser error is answered and logged."""

    __slots__ = ()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After a body that could not be decoded was answered (a 400 from the middleware),
        # aiohttp drains the rest and meets the same error again: not worth a traceback.
        if isinstance(kw.get("exc_info"), RequestPayloadError | HttpProcessingError):
            log.debug("abandoned an undecodable request body")
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # Never the message or the traceback: both quote the offending bytes.
        log.info("refused a malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        code = exc.code if 400 <= exc.code < 500 else 400
        response = web.json_response({"error": MALFORMED}, status=code)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests with a JSON 4xx."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if _AIOHTTP_3 and type(server) is web.Server:
            server.__class__ = _Server
        return server
