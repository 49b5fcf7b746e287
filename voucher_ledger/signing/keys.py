"""The ledger's signing key pair, as files.

* The private key (Ed25519, PKCS#8 PEM): ``SIGNING_KEY_FILE``, or ``DATA_DIR/ledger-signing.key``,
  generated (mode 0600, atomically: two processes starting together get the same key) the first
  time a process needs it. Only the processors sign.
* The public key (SubjectPublicKeyInfo PEM): ``SIGNING_PUBLIC_KEY_FILE``; else derived from the
  private key; else ``DATA_DIR/ledger-signing.pub``, written next to a generated private key.
  The projectors, the HTTP side, ``verify`` and the subscribers need only this one.

The private key is never logged or printed; ``voucher-ledger signing-key`` prints the public one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from voucher_ledger.config.settings import Settings
from voucher_ledger.signing.proof import EventSigner, key_id

log = logging.getLogger(__name__)

PRIVATE_FILE = "ledger-signing.key"
PUBLIC_FILE = "ledger-signing.pub"


class SigningKeyError(Exception):
    """A key file that is missing, unreadable or not an Ed25519 key; the message names it."""


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def parse_public_key(pem: str | bytes) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("the public key is not an Ed25519 key")
    return key


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def _read_public(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {path}: {exc.strerror}") from None
    try:
        return parse_public_key(data)
    except SigningKeyError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None


def create_key_pair(directory: Path) -> Ed25519PrivateKey:
    """``directory/ledger-signing.key`` (0600) and ``.pub``, created if missing (atomically:
    the private key is written to a temporary file and linked into place, so a concurrent
    process either creates it or reads the complete one), then read."""
    path = directory / PRIVATE_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        tmp = directory / f".{PRIVATE_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process got there first: theirs is kept
            log.info("generated the ledger signing key %s", path)
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    key = _read_private(path)
    pub = directory / PUBLIC_FILE
    text = public_pem(key.public_key())
    if not pub.exists() or pub.read_text() != text:
        tmp_pub = directory / f".{PUBLIC_FILE}.{os.getpid()}"
        tmp_pub.write_text(text)
        os.chmod(tmp_pub, 0o644)
        os.replace(tmp_pub, pub)
    return key


def load_signer(settings: Settings) -> EventSigner:
    """The processors' signer: ``SIGNING_KEY_FILE``, or the data dir's key (generated once)."""
    if settings.signing_key_file is not None:
        return EventSigner(_read_private(settings.signing_key_file))
    return EventSigner(create_key_pair(settings.data_dir))


def load_public_key(settings: Settings, *, create: bool = True) -> Ed25519PublicKey:
    """The key events are checked with: ``SIGNING_PUBLIC_KEY_FILE``; else the public half of
    ``SIGNING_KEY_FILE``; else the data dir's (its pair generated on the first start, unless
    ``create`` is false: the tools, which must not invent a key)."""
    if settings.signing_public_key_file is not None:
        return _read_public(settings.signing_public_key_file)
    if settings.signing_key_file is not None:
        return _read_private(settings.signing_key_file).public_key()
    pub = settings.data_dir / PUBLIC_FILE
    if pub.exists() or not create:
        return _read_public(pub)
    return create_key_pair(settings.data_dir).public_key()


def describe(public_key: Ed25519PublicKey) -> str:
    """The public key as ``voucher-ledger signing-key`` prints it: its id, then the PEM."""
    return f"# key id {key_id(public_key)}\n{public_pem(public_key)}"
