"""The stream sequence of a JetStream delivery, read from its ack subject."""

from __future__ import annotations

from nats.aio.msg import Msg

from voucher_ledger.jetstream.pulls import stream_sequence


def delivery(reply: str) -> Msg:
    return Msg(_client=None, subject="x.events.voucher.A", reply=reply, data=b"{}")  # type: ignore[arg-type]


def test_v1_ack_subject() -> None:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    assert stream_sequence(delivery("$JS.ACK.EV.PROJ.1.4711.17.1763750000000000000.3")) == 4711


def test_v2_ack_subject_with_domain_and_account_hash() -> None:
    reply = "$JS.ACK.hub.ACCHASH.EV.PROJ.2.99.5.1763750000000000000.0.rand"
    assert stream_sequence(delivery(reply)) == 99
    assert stream_sequence(delivery(reply)) == delivery(reply).metadata.sequence.stream
