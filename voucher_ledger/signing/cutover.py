"""The signing cut-over: the first stream sequence at which every event must be signed.

Recorded once, by the first processor instance that starts with signing, in the event stream's
metadata (``voucher_ledger.signing``: the sequence, the key id, the public key, and the
signing key's signature over ``stream + sequence + key id``). A forger who could rewrite the
stream's configuration still cannot move the cut-over (the record would no longer verify); one
who deleted the record is refused too: the processors record it again only while the stream's
last event is unsigned (signing never started), and the readers treat a stream without a valid
record as signed from its first event (nothing unsigned accepted).

``previous_event`` is the lookup a reader that starts mid-stream uses to find an aggregate's
chain head: the aggregate's last event below a sequence (a batched direct get, ADR-31's
``multi_last`` with ``up_to_seq``). ``events_between`` reads the rest of a part a reader's batch
ended in (or, from a start inside one, its beginning).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.aio.client import Client

from voucher_ledger.jetstream.api import JetStreamApiError, js_api
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.signing.chain import Fetch, StreamChecker
from voucher_ledger.signing.proof import EventChecker, EventSigner, read_proof

log = logging.getLogger(__name__)

METADATA_KEY = "voucher_ledger.signing"


class CutoverError(Exception):
    """No valid cut-over can be read or recorded; the message says why."""


def _public_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


async def _stream_info(nc: Client, stream: str) -> dict[str, Any]:
    try:
        return await js_api(nc, f"STREAM.INFO.{stream}")
    except JetStreamApiError as exc:
        raise CutoverError(f"stream {stream}: {exc.description}") from exc


def _record(info: dict[str, Any]) -> dict[str, Any] | None:
    text = (info["config"].get("metadata") or {}).get(METADATA_KEY)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _valid_cutover(record: dict[str, Any], stream: str, public_key: Ed25519PublicKey) -> int | None:
    checker = EventChecker(public_key, 0)
    seq, key, sig = record.get("cutover"), record.get("key"), record.get("sig")
    if not (isinstance(seq, int) and isinstance(key, str) and isinstance(sig, str)):
        return None
    return seq if seq >= 1 and checker.check_cutover(stream, seq, key, sig) else None


async def read_cutover(nc: Client, stream: str, public_key: Ed25519PublicKey) -> int | None:
    """The recorded cut-over; None when there is none yet; 1 (every event must be signed) when
    the record does not verify with ``public_key`` (logged)."""
    record = _record(await _stream_info(nc, stream))
    if record is None:
        return None
    seq = _valid_cutover(record, stream, public_key)
    if seq is None:
        log.error(
            "stream %s: the signing cut-over record does not verify with this public key: "
            "every event must be signed",
            stream,
        )
        return 1
    return seq


def checker_for(public_key: Ed25519PublicKey, cutover: int | None) -> EventChecker:
    """The checker of a reader that cannot wait for the cut-over (a tool): no record means
    every event must be signed."""
    return EventChecker(public_key, 1 if cutover is None else cutover)


async def ensure_cutover(nc: Client, stream: str, signer: EventSigner) -> int:
    """The cut-over, recorded now (at the stream's next sequence) if there is none yet."""
    info = await _stream_info(nc, stream)
    record = _record(info)
    if record is not None:
        seq = _valid_cutover(record, stream, signer.public_key)
        if seq is None:
            raise CutoverError(
                f"stream {stream}: the signing cut-over record does not verify with the signing "
                f"key {signer.key_id} (another key, or a forged record); not signing with it. "
                "Every processor instance must sign with the same key: give each the same "
                "SIGNING_KEY_FILE"
            )
        return seq
    last = int(info["state"]["last_seq"])
    if last and await _last_is_signed(nc, stream, last):
        raise CutoverError(
            f"stream {stream} holds signed events but no signing cut-over record: it was "
            "removed; restore it (the stream's metadata) instead of recording a new one"
        )
    seq = last + 1
    config = dict(info["config"])
    config["metadata"] = {
        **(config.get("metadata") or {}),
        METADATA_KEY: json.dumps(
            {
                "cutover": seq,
                "key": signer.key_id,
                "public_key": _public_b64(signer.public_key),
                "sig": signer.sign_cutover(stream, seq),
            },
            separators=(",", ":"),
        ),
    }
    try:
        await js_api(nc, f"STREAM.UPDATE.{stream}", config)
    except JetStreamApiError as exc:
        raise CutoverError(
            f"recording the signing cut-over on {stream}: {exc.description}"
        ) from exc
    # Two instances starting together: whichever record is there now is the one.
    again = _record(await _stream_info(nc, stream))
    recorded = _valid_cutover(again or {}, stream, signer.public_key)
    if recorded is None:
        raise CutoverError(f"stream {stream}: the signing cut-over could not be read back")
    log.info(
        "stream %s: events are signed from sequence %d on (key %s)", stream, recorded, signer.key_id
    )
    return recorded


async def _last_is_signed(nc: Client, stream: str, seq: int) -> bool:
    try:
        answer = await js_api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq})
    except JetStreamApiError:
        return False
    data = base64.b64decode(answer["message"].get("data") or "")
    return read_proof(data) is not None


async def previous_event(
    nc: Client, stream: str, subject: str, before_seq: int, *, timeout: float = 5.0
) -> tuple[int, bytes] | None:
    """The last event on ``subject`` below ``before_seq`` (its sequence and body), or None."""
    if before_seq <= 1:
        return None
    request = {"multi_last": [subject], "up_to_seq": before_seq - 1, "batch": 1}
    msg = await nc.request(
        f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), timeout=timeout
    )
    headers = msg.headers or {}
    if headers.get("Status"):
        return None  # 404: none; 204 right away: none either
    return int(headers["Nats-Sequence"]), msg.data


async def events_between(
    nc: Client, stream: str, first: int, last: int, *, timeout: float = 5.0
) -> list[tuple[int, bytes]]:
    """The stored events ``first`` to ``last`` (their sequences and bodies): one batched direct
    get (ADR-31), answered by any replica. Fewer when the stream does not reach ``last``."""
    if last < first:
        return []
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    out: list[tuple[int, bytes]] = []
    try:
        request = {"seq": first, "batch": last - first + 1}
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while True:
            msg = await sub.next_msg(timeout)
            headers = msg.headers or {}
            if headers.get("Status"):
                break  # the end of the batch (204), or nothing there (404)
            seq = int(headers["Nats-Sequence"])
            if seq > last:
                break
            out.append((seq, msg.data))
            if seq == last:
                break
    finally:
        await sub.unsubscribe()
    return out


def range_reader(nc: Client, stream: str) -> Fetch:
    """:func:`events_between` on ``stream``: a reader's ``fetch`` (``chain.StreamChecker``)."""

    async def fetch(first: int, last: int) -> list[tuple[int, bytes]]:
        return await events_between(nc, stream, first, last)

    return fetch


async def reader_checker(
    nc: Client,
    stream: str,
    layout: Layout,
    public_key: Ed25519PublicKey,
    start_seq: int,
    *,
    strict: bool = True,
    capacity: int | None = None,
) -> StreamChecker | None:
    """The checker of a reader of ``stream`` that starts at ``start_seq`` (it looks up the
    previous event of an aggregate it meets first mid-stream). Without a cut-over record:
    ``strict``, every event must be signed; else None (the caller waits for the processors)."""
    cutover = await read_cutover(nc, stream, public_key)
    if cutover is None and not strict:
        return None

    async def lookup(aggregate: str, aggregate_id: str, seq: int) -> tuple[int, bytes] | None:
        return await previous_event(nc, stream, layout.event_subject(aggregate, aggregate_id), seq)

    return StreamChecker(
        checker_for(public_key, cutover),
        lookup=lookup,
        fetch=range_reader(nc, stream),
        start_seq=start_seq,
        capacity=capacity,
    )
