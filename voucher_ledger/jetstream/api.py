"""One way to call the JetStream JSON API: :func:`js_api` sends a request to ``$JS.API.<what>``
and returns the parsed answer; :func:`parse_api_answer` reads any JetStream answer (an API
response or a PubAck) and raises :class:`JetStreamApiError` when it carries an ``error``.

Errors:

* The server answered with an error: :class:`JetStreamApiError`, with the error's ``code``
  (HTTP-like: 400, 404, 503 ...), ``err_code`` (JetStream's own, e.g. 10071 wrong last
  sequence) and ``description``. Callers match on ``err_code`` (or ``code``), never on the text.
* No answer (a timeout, no responders, the connection closed): nats.py's own errors, unchanged
  (``nats.errors.TimeoutError``, ``NoRespondersError``, ``ConnectionClosedError``). They are a
  different case (nothing is known about the outcome: an append may have landed), which each
  caller already handles in its own way (the event store turns them into
  ``EventStoreUnavailable``), so they are not folded into :class:`JetStreamApiError`.
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client

API_PREFIX = "$JS.API."
DEFAULT_TIMEOUT = 5.0  # seconds


class JetStreamApiError(Exception):
    """The JetStream API answered with an error."""

    def __init__(self, code: int, err_code: int, description: str, *, what: str = "") -> None:
        prefix = f"{what}: " if what else ""
        super().__init__(f"{prefix}{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


def parse_api_answer(data: bytes, *, what: str = "") -> dict[str, Any]:
    """The JSON answer ``data``; :class:`JetStreamApiError` if it holds an ``error``
    (``what`` names the request in the message)."""
    answer: dict[str, Any] = json.loads(data)
    err = answer.get("error")
    if err:
        raise JetStreamApiError(
            int(err.get("code", 0)),
            int(err.get("err_code", 0)),
            str(err.get("description", "")),
            what=what,
        )
    return answer


async def js_api(
    nc: Client,
    what: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Request ``$JS.API.<what>`` (e.g. ``STREAM.INFO.<stream>``) with ``body`` as JSON (an
    empty payload when None) and return the answer; :class:`JetStreamApiError` if it is an
    error. No answer raises nats.py's error (see the module docstring)."""
    payload = json.dumps(body).encode() if body is not None else b""
    msg = await nc.request(API_PREFIX + what, payload, timeout=timeout)
    return parse_api_answer(msg.data, what=what)
