"""Deterministic ids: the text of ``uuid.uuid5(namespace, name)``, made without the ``UUID``
object (its construction and ``str`` were most of a redemption id's cost in the processors'
hot path, bench/README.md, session 12). Equal to the standard library's for every name
(tests/unit/test_ids.py)."""

from __future__ import annotations

import hashlib
import uuid


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``: SHA-1 of the namespace's bytes and the name's
    UTF-8, its first 16 bytes with the version (5) and the RFC 4122 variant set."""
    digest = bytearray(
        hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
