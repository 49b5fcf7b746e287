"""The JetStream API helper against a real nats-server: an answer, an error answer as one
JetStreamApiError with its codes, and no answer left as nats.py's own error."""

from __future__ import annotations

import nats.errors
import pytest
from nats.aio.client import Client

from voucher_ledger.jetstream.api import JetStreamApiError, js_api, parse_api_answer
from voucher_ledger.jetstream.streams import StreamsSpec


async def test_an_answer_is_returned_parsed(nc: Client, applied: StreamsSpec) -> None:
    info = await js_api(nc, f"STREAM.INFO.{applied.event_stream}")
    assert info["config"]["name"] == applied.event_stream
    assert info["state"]["last_seq"] == 0


async def test_an_error_answer_is_one_error_class_with_its_codes(nc: Client, prefix: str) -> None:
    with pytest.raises(JetStreamApiError) as refused:
        await js_api(nc, f"STREAM.INFO.{prefix.upper()}_NOPE")
    assert refused.value.code == 404
    assert refused.value.err_code == 10059
    assert refused.value.description == "stream not found"


async def test_a_consumer_request_with_a_body(nc: Client, applied: StreamsSpec) -> None:
    names = await js_api(nc, f"CONSUMER.NAMES.{applied.event_stream}", {"offset": 0})
    assert isinstance(names["consumers"], list)


async def test_no_answer_stays_a_transport_error_not_an_api_error(nc: Client) -> None:
    # An API subject nothing answers: nats.py's own error (a timeout), not a JetStreamApiError.
    with pytest.raises(nats.errors.Error) as raised:
        await js_api(nc, "NOT.AN.API", timeout=0.5)
    assert not isinstance(raised.value, JetStreamApiError)


def test_a_pub_ack_error_is_parsed_by_code() -> None:
    data = b'{"error": {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}}'
    with pytest.raises(JetStreamApiError) as refused:
        parse_api_answer(data, what="append")
    assert (refused.value.code, refused.value.err_code) == (400, 10071)
    assert str(refused.value).startswith("append: wrong last sequence: 3")
    assert parse_api_answer(b'{"stream": "S", "seq": 4}') == {"stream": "S", "seq": 4}
