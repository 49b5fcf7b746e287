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
``handle_error``.

That swap is a fast path behind a fence (:data:`PROTOCOL`, the mechanism of
:mod:`voucher_ledger.jetstream.fastpaths`): it relies on ``AppRunner._make_server`` and on
``web.Server``'s ``_kwargs`` and ``_loop``. With the fast paths off, or those not as expected
(aiohttp 4 among them), :func:`app_runner` gives the stock ``web.AppRunner``: a malformed request
then gets aiohttp's own ``text/plain`` 400 (which quotes the offending line back to the client
that sent it). Either way the server's log goes through :data:`server_log`, whose filter keeps
only the class of a parser error, never its message or traceback: no request bytes, so no
token, reach the log.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from voucher_ledger.jetstream.fastpaths import Fence, parameters

log = logging.getLogger(__name__)

MALFORMED = "malformed HTTP request"
_AIOHTTP_3 = aiohttp.__version__.startswith("3.")
_REQUEST_ERRORS = (HttpProcessingError, RequestPayloadError)  # their messages quote request bytes


class _NoRequestBytes(logging.Filter):
    """A record about a request aiohttp could not parse keeps the exception's class only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _REQUEST_ERRORS):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


# The logger of the HTTP server's connections (aiohttp's ``logger`` argument, public).
server_log = logging.getLogger(f"{__name__}.connections")
server_log.addFilter(_NoRequestBytes())


def _check_protocol() -> str | None:
    if not _AIOHTTP_3:
        return "aiohttp 4 answers parser errors through the middleware"
    make_server = getattr(web.AppRunner, "_make_server", None)
    if not inspect.iscoroutinefunction(make_server):
        return "web.AppRunner._make_server is missing or not a coroutine function"
    expected = ("request", "status", "exc", "message")
    server_init = inspect.signature(web.Server.__init__).parameters
    if "loop" not in server_init or inspect.Parameter.VAR_KEYWORD not in {
        p.kind for p in server_init.values()
    }:
        return "web.Server takes no loop and keyword arguments"
    return (
        parameters(make_server, "web.AppRunner._make_server", ())
        or parameters(web.Server.__call__, "web.Server.__call__", ())
        or parameters(RequestHandler.handle_error, "RequestHandler.handle_error", expected)
        or parameters(RequestHandler.log_exception, "RequestHandler.log_exception", ("args", "kw"))
    )


PROTOCOL = Fence("JSON answers to malformed HTTP", "aiohttp", _check_protocol)


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
        try:
            code = exc.code if 400 <= exc.code < 500 else 400
            response = web.json_response({"error": MALFORMED}, status=code)
            response.force_close()
        except Exception:  # a bug here must not cost the answer: aiohttp's own then
            log.exception("the JSON answer to a malformed request failed; aiohttp answers")
            return super().handle_error(request, status, exc, message)
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests with a JSON 4xx (the fast
    path: use :func:`app_runner`, which checks the fence)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if type(server) is web.Server and PROTOCOL.allowed():
            state = vars(server)
            if isinstance(state.get("_kwargs"), dict) and "_loop" in state:
                server.__class__ = _Server
            else:
                PROTOCOL.refuse("web.Server has no _kwargs or _loop")
        return server


def app_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner for ``serve``: :class:`AppRunner` if the fast path may be used, else the stock
    ``web.AppRunner``; both log the connections through :data:`server_log`."""
    kwargs.setdefault("logger", server_log)
    if PROTOCOL.allowed():
        return AppRunner(app, **kwargs)
    return web.AppRunner(app, **kwargs)
