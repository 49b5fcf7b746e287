"""An Organization moves between Sovereigns (issue #22): ``voucher-ledger org export`` writes its
whole billing history as a signed bundle and records the move; ``voucher-ledger org import``
replays the bundle into another Sovereign's ledger with the original ids and times.

**The bundle** (format ``voucher-ledger/org-bundle``, version 1) is UTF-8 JSON Lines:

1. the header: ``{"format", "version", "tenant", "source", "stream", "destination",
   "wallet_events", "redemption_events", "last_seq", "trail_upto"}`` (``source``: the
   exporting Sovereign's ``SOVEREIGN_FQDN``, or null; ``last_seq``: the stream sequence of
   the account's last exported event; ``trail_upto``: the redemptions carried are those at or
   below this stream sequence);
2. one line per event, in stream order: ``{"part": "wallet" | "redemption", "seq": N,
   "event": ENVELOPE}``, where ENVELOPE is the event exactly as stored on the exporting
   Sovereign's stream (the documented envelope, its ``proof`` included): first the account's
   wallet events (credit, orders, invoices), then its voucher redemptions and their reversals;
3. the signature: ``{"signature": {"alg": "Ed25519", "key": KEY_ID, "digest": SHA256,
   "sig": SIG}}``: ``digest`` is the SHA-256 (hex) of every byte before this line, ``sig``
   (base64url) the Ed25519 signature of ``"voucher-ledger/org-bundle/1\\n" + KEY_ID + "\\n" +
   digest`` by the exporting Sovereign's ledger key (the processors' key: ``voucher-ledger
   signing-key`` prints its public half and ``KEY_ID``).

Nothing in it depends on the time of the export: exporting a moved account again writes the
same bytes (Ed25519 signatures are deterministic), whose digest the move event names.

**Export** folds the account, refuses an account that has no history, has moved already (then
it writes the same bundle again) or has a checkout half-way (an order ``opened``), writes the
bundle, then appends ``wallet.account_moved`` with the history's last sequence as the
expectation: a change to the account in between (a checkout) is a conflict, and the export
starts over. From the move on the account opens no order here (``ledger.wallet``).

**Import** checks the signature against the keys the operator trusts (``--trust``) before it
reads anything else, then appends the wallet events (their proofs replaced by this Sovereign's,
as ``import-seed`` signs) in chunks of atomic batches, each with the subject's expected last
sequence. The account's events already here decide: none, write them all; the bundle's first
ones (an interrupted import), write the rest; all of them, nothing to do; anything else, the
account has another history here: refused, nothing written. The redemption events are not
written: the vouchers and their cap slots stay with the exporting Sovereign; the bundle
carries them for the trail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from voucher_ledger.billing.failpoints import crash_if
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.store import ConcurrencyConflict
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger import wallet as wallet_agg
from voucher_ledger.ledger.codes import CODE_PATTERN, validate_customer_id
from voucher_ledger.ledger.commands import MoveAccount
from voucher_ledger.ledger.errors import CheckoutInFlight, DomainError, InvalidInput
from voucher_ledger.ledger.events import (
    AccountMoved,
    Actor,
    EventEnvelope,
    RecordedEvent,
    RedemptionReversed,
    VoucherRedeemed,
    decode_envelope,
    encode_envelope,
)
from voucher_ledger.signing.keys import SigningKeyError, parse_public_key
from voucher_ledger.signing.proof import (
    GENESIS,
    EventSigner,
    bundle_signature_valid,
    key_id,
    proof_of,
    read_proof,
)

FORMAT = "voucher-ledger/org-bundle"
VERSION = 1
EXPORT_ACTOR = Actor(sub="org-export", role="system")
CHUNK = 500  # events per atomic batch on import
WAIT = 30.0  # seconds an export waits for a moment without a checkout half-way (--wait)
_PAUSE = 0.05  # between two reads of an account that is checking out
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


class MoveError(Exception):
    """The move cannot be made (nothing was written); the message says why."""


class BundleRefused(MoveError):
    """A bundle that is not one, is tampered with, or is signed by a key not trusted here."""


# ------------------------------------------------------------------------------ the bundle


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _stored(recorded: RecordedEvent) -> bytes:
    """The event as stored (one line of JSON: the encoder escapes every newline)."""
    raw = recorded.raw if recorded.raw is not None else encode_envelope(recorded.envelope)
    return raw.strip()


def build_bundle(
    tenant: str,
    wallet: Sequence[RecordedEvent],
    redemptions: Sequence[RecordedEvent],
    signer: EventSigner,
    *,
    source: str | None,
    stream: str,
    destination: str | None,
    trail_upto: int,
) -> tuple[bytes, str]:
    """The signed bundle and its digest."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "tenant": tenant,
        "source": source,
        "stream": stream,
        "destination": destination,
        "wallet_events": len(wallet),
        "redemption_events": len(redemptions),
        "last_seq": wallet[-1].seq,
        "trail_upto": trail_upto,
    }
    parts = [_line(header)]
    for part, events in (("wallet", wallet), ("redemption", redemptions)):
        for r in events:
            parts.append(
                b'{"part":"%s","seq":%d,"event":%s}\n' % (part.encode(), r.seq, _stored(r))
            )
    body = b"".join(parts)
    digest = hashlib.sha256(body).hexdigest()
    signature = {
        "alg": "Ed25519",
        "key": signer.key_id,
        "digest": digest,
        "sig": signer.sign_bundle(digest),
    }
    return body + _line({"signature": signature}), digest


@dataclass
class Bundle:
    """A bundle whose signature checked: its header and events (upcast to this build)."""

    header: dict[str, Any]
    wallet: list[EventEnvelope]
    redemptions: list[EventEnvelope]
    digest: str
    key: str

    @property
    def tenant(self) -> str:
        return str(self.header["tenant"])


def trusted_keys(pem: bytes) -> list[Ed25519PublicKey]:
    """Every PEM public key in a file (as ``voucher-ledger signing-key`` prints them: comment
    lines beside them are ignored)."""
    blocks = _PEM.findall(pem)
    if not blocks:
        raise SigningKeyError("no PEM public key in it")
    return [parse_public_key(block) for block in blocks]


def read_bundle(data: bytes, trusted: Sequence[Ed25519PublicKey]) -> Bundle:
    """The bundle in ``data``, if its signature is by one of the ``trusted`` keys and covers
    every byte before it; else :class:`BundleRefused`."""
    if not data.endswith(b"\n") or data.count(b"\n") < 3:
        raise BundleRefused("not an Organization bundle (truncated, or another kind of file)")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    body, last = data[:cut], data[cut:]
    try:
        signature = json.loads(last)["signature"]
        key, digest, sig = (str(signature[k]) for k in ("key", "digest", "sig"))
        alg = signature["alg"]
    except (ValueError, KeyError, TypeError):
        raise BundleRefused("its signature line is not readable: the bundle was altered") from None
    if alg != "Ed25519":
        raise BundleRefused(f"signed with {alg!r}, not Ed25519")
    if hashlib.sha256(body).hexdigest() != digest:
        raise BundleRefused(
            "its contents do not match its signed digest: the bundle was altered after export"
        )
    keys = {key_id(k): k for k in trusted}
    public = keys.get(key)
    if public is None:
        raise BundleRefused(
            f"signed by key {key}, which this Sovereign does not trust (trusted: "
            f"{', '.join(sorted(keys)) or 'none'}; --trust the exporting Sovereign's "
            "`voucher-ledger signing-key`)"
        )
    if not bundle_signature_valid(public, digest, sig):
        raise BundleRefused(f"its signature does not verify with key {key}: the bundle was altered")
    return _parse(body, digest, key)


def _parse(body: bytes, digest: str, key: str) -> Bundle:
    """A signed body: still checked, since a trusted key may have signed a bundle of another
    version or one this build cannot read."""
    lines = body.split(b"\n")[:-1]
    try:
        header = json.loads(lines[0])
        items = [json.loads(line) for line in lines[1:]]
    except ValueError as exc:
        raise BundleRefused(f"not readable JSON lines: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BundleRefused("not an Organization bundle (its header names no such format)")
    if header.get("version") != VERSION:
        raise BundleRefused(
            f"bundle version {header.get('version')!r}; this build reads version {VERSION}"
        )
    try:
        tenant = validate_customer_id(header.get("tenant"))
    except InvalidInput as exc:
        raise BundleRefused(f"its tenant cannot be an account: {exc.message}") from None
    wallet: list[EventEnvelope] = []
    redemptions: list[EventEnvelope] = []
    for n, item in enumerate(items, start=2):
        try:
            envelope = decode_envelope(json.dumps(item["event"]).encode())
            part = item["part"]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleRefused(f"line {n}: not an event this build reads: {exc}") from None
        event = envelope.event
        if part == "wallet" and (envelope.aggregate, envelope.aggregate_id) == ("wallet", tenant):
            if isinstance(event, AccountMoved):
                raise BundleRefused(f"line {n}: the account's move cannot travel in a bundle")
            wallet.append(envelope)
        elif (
            part == "redemption"
            and envelope.aggregate == "voucher"
            and isinstance(event, VoucherRedeemed | RedemptionReversed)
            and event.customer_id == tenant
        ):
            redemptions.append(envelope)
        else:
            raise BundleRefused(f"line {n}: an event of another account ({part})")
    if not wallet or len(wallet) != header.get("wallet_events"):
        raise BundleRefused("its wallet events do not match its header")
    if len({e.event_id for e in wallet}) != len(wallet):
        raise BundleRefused("an event id appears twice in it")
    if len(redemptions) != header.get("redemption_events"):
        raise BundleRefused("its redemption events do not match its header")
    return Bundle(header, wallet, redemptions, digest, key)


# ------------------------------------------------------------------------------ export


@dataclass
class Exported:
    digest: str
    wallet_events: int
    redemption_events: int
    destination: str | None
    again: bool  # moved before: the same bundle written again
    state: wallet_agg.WalletState
    reads: int = 1  # how many times the account was read (a checkout under way: again)


class _Reader:
    """The subjects an export reads, each loaded once and then only what was appended since
    (an account that is checking out is read again and again: the shorter the read, the
    sooner a moment comes when nothing lands between it and the move)."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store
        self.seen: dict[str, list[RecordedEvent]] = {}

    async def load(self, subject: str) -> tuple[list[RecordedEvent], list[RecordedEvent]]:
        """The subject's whole history, and what of it is new since the last load."""
        have = self.seen.setdefault(subject, [])
        more = await self.store.load(subject, have[-1].seq if have else 0, consistent=True)
        have.extend(more)
        return have, more


async def _redemptions(
    reader: _Reader, layout: Layout, state: wallet_agg.WalletState, upto: int
) -> list[RecordedEvent]:
    """The account's redemptions and their reversals at or below stream sequence ``upto``, on
    the codes its orders named and its grants came from (every redemption of an account is
    made by one of its checkouts, and an imported one left a grant)."""
    codes = {o.promo_code for o in state.orders.values() if o.promo_code}
    codes |= {g.code for g in state.grants.values()}
    found: list[RecordedEvent] = []
    for code in sorted(c for c in codes if CODE_PATTERN.fullmatch(c)):
        history, _ = await reader.load(layout.voucher_subject(code))
        for r in history:
            event = r.envelope.event
            if (
                r.seq <= upto
                and isinstance(event, VoucherRedeemed | RedemptionReversed)
                and event.customer_id == state.customer_id
            ):
                found.append(r)
    return sorted(found, key=lambda r: r.seq)


def _head(recorded: RecordedEvent) -> str:
    """The aggregate's chain head after ``recorded``."""
    proof = read_proof(recorded.raw) if recorded.raw is not None else proof_of(recorded.envelope)
    return proof.link if proof is not None else GENESIS


async def export(
    store: JetStreamEventStore,
    layout: Layout,
    tenant: str,
    signer: EventSigner,
    write: Callable[[bytes], None],
    *,
    source: str | None,
    stream: str,
    destination: str | None,
    seal: bool,
    wait: float = WAIT,
) -> Exported:
    """Write the account's bundle (``write``), then record the move. ``seal``: the move event
    is signed as the processors sign theirs (LEDGER_SIGNING). While the account has a checkout
    half-way, or changes between the read and the move, it is read again, for up to ``wait``
    seconds.

    The bundle's redemptions are those at or below the stream's last sequence when the export
    began reading the vouchers (``trail_upto``, in the header and the move): exported again, a
    moved account gives the same bundle whatever came after."""
    subject = layout.wallet_subject(tenant)
    reader = _Reader(store)
    deadline = time.monotonic() + wait
    busy = ""
    reads = 0
    state = wallet_agg.initial_state(tenant)
    while time.monotonic() < deadline or not busy:
        reads += 1
        history, more = await reader.load(subject)
        if not history:
            raise MoveError(f"{tenant} has no billing history on this Sovereign")
        for r in more:
            state = wallet_agg.evolve(state, r)
        moved = state.moved
        if moved is not None:  # the same bundle again: the history before the move
            at = next(
                i for i, r in enumerate(history) if isinstance(r.envelope.event, AccountMoved)
            )
            kept = history[:at]
            before = wallet_agg.fold(tenant, kept)
            redemptions = await _redemptions(reader, layout, before, moved.trail_upto)
            data, digest = build_bundle(
                tenant,
                kept,
                redemptions,
                signer,
                source=source,
                stream=stream,
                destination=moved.destination,
                trail_upto=moved.trail_upto,
            )
            if digest != moved.bundle_digest:
                raise MoveError(
                    f"{tenant} moved already, in bundle {moved.bundle_digest}; its history "
                    f"here no longer gives that bundle (digest {digest}), nothing written"
                )
            write(data)
            return Exported(digest, len(kept), len(redemptions), moved.destination, True, before)
        in_flight = [o.order_id for o in state.orders.values() if o.status == "opened"]
        if in_flight:
            busy = CheckoutInFlight(tenant, in_flight[0]).message
            await asyncio.sleep(_PAUSE)
            continue
        upto = await store.last_sequence()  # every event up to it is stored: loaded below
        redemptions = await _redemptions(reader, layout, state, upto)
        data, digest = build_bundle(
            tenant,
            history,
            redemptions,
            signer,
            source=source,
            stream=stream,
            destination=destination,
            trail_upto=upto,
        )
        try:
            events = wallet_agg.decide_move(
                state,
                MoveAccount(
                    customer_id=tenant,
                    destination=destination,
                    bundle_digest=digest,
                    wallet_events=len(history),
                    redemption_events=len(redemptions),
                    trail_upto=upto,
                ),
            )
        except DomainError as exc:
            raise MoveError(exc.message) from None
        envelope = EventEnvelope(
            event_id=str(uuid.uuid4()),
            aggregate="wallet",
            aggregate_id=tenant,
            occurred_at=datetime.now(UTC),
            actor=EXPORT_ACTOR,
            command_id=f"org-export:{digest}",
            event=events[0],
        )
        envelopes = [envelope]
        if seal:
            ((envelopes, _),) = signer.sign_append([(_head(history[-1]), envelopes)])
        write(data)  # before the move is recorded: a move always has its bundle
        try:
            await store.append(subject, history[-1].seq, envelopes)
        except ConcurrencyConflict:  # the account changed since it was read: read it again
            busy = f"{tenant} kept changing while it was exported"
            continue
        crash_if("org_export.after_move")  # the bundle not in place yet: exported again
        return Exported(digest, len(history), len(redemptions), destination, False, state, reads)
    raise MoveError(f"{busy} (for {wait:g} s); try again when it is quiet")


# ------------------------------------------------------------------------------ import


@dataclass
class Imported:
    written: int
    already: int
    state: wallet_agg.WalletState
    differences: list[str] = field(default_factory=list)


def _recorded(envelopes: Sequence[EventEnvelope]) -> list[RecordedEvent]:
    return [RecordedEvent(seq=n, envelope=e) for n, e in enumerate(envelopes, start=1)]


async def import_bundle(
    store: JetStreamEventStore,
    layout: Layout,
    bundle: Bundle,
    signer: EventSigner | None,
    *,
    dry_run: bool = False,
    chunk_size: int = CHUNK,
) -> Imported:
    """Replay the bundle's wallet events into this ledger (see the module docstring)."""
    tenant = bundle.tenant
    try:
        expected = wallet_agg.fold(tenant, _recorded(bundle.wallet))
    except ValueError as exc:  # a history the decider never writes (negative credit)
        raise BundleRefused(f"its history does not fold: {exc}") from None
    subject = layout.wallet_subject(tenant)
    have = await store.load(subject, consistent=True)
    planned = [e.event_id for e in bundle.wallet]
    ids = [r.envelope.event_id for r in have]
    if ids[: len(planned)] != planned and ids != planned[: len(ids)]:
        raise MoveError(
            f"{tenant} already has a different billing history on this Sovereign ({len(have)} "
            "events not from this bundle); nothing written"
        )
    rest = [e.model_copy(update={"proof": None}) for e in bundle.wallet[len(have) :]]
    if rest and not dry_run:
        last = have[-1].seq if have else 0
        head = _head(have[-1]) if have else GENESIS
        for start in range(0, len(rest), chunk_size):
            chunk = rest[start : start + chunk_size]
            if signer is not None:
                ((chunk, head),) = signer.sign_append([(head, chunk)])
            recorded = await store.append(subject, last, chunk)
            last = recorded[-1].seq
            crash_if("org_import.after_chunk")  # a rerun writes the rest
    if dry_run:
        return Imported(0, min(len(have), len(planned)), expected)
    # read back and folded by the domain code: the ledger's account against the bundle's
    now = await store.load(subject, consistent=True)
    state = wallet_agg.fold(tenant, now[: len(planned)])
    imported = Imported(len(rest), len(planned) - len(rest), state)
    for what, want, got in (
        ("balance (baisa)", expected.balance_baisa, state.balance_baisa),
        ("reserved (baisa)", expected.reserved_baisa, state.reserved_baisa),
        (
            "orders",
            {o: v.status for o, v in expected.orders.items()},
            {o: v.status for o, v in state.orders.items()},
        ),
        (
            "expiring grants",
            {r: (lot.left, lot.expires_at) for r, lot in expected.lots.items()},
            {r: (lot.left, lot.expires_at) for r, lot in state.lots.items()},
        ),
        ("invoices", dict(expected.invoices), dict(state.invoices)),
    ):
        if want != got:
            imported.differences.append(f"{what}: bundle {want!r}, ledger {got!r}")
    return imported
