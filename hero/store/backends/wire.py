"""The wire format of batched fragment calls, shared by `RemoteBackend` and the fragment server.

A put sends (raw digest, size, bytes) per fragment; a get or delete sends raw
digests back to back; a get's reply is (size, bytes) per digest asked for, with
size `MISSING` for a fragment the server does not hold.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hero.errors import BadRequest
from hero.store.backends.protocol import BackendDown, check_digest

MISSING = 0xFFFFFFFFFFFFFFFF


def encode_fragments(items: Sequence[tuple[str, bytes]]) -> bytes:
    """A put's body: each fragment's raw digest, its size and its bytes."""
    parts = []
    for digest, data in items:
        parts.append(bytes.fromhex(check_digest(digest)) + struct.pack(">Q", len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_fragments(body: bytes) -> list[tuple[str, bytes]]:
    """(digest, bytes) per fragment of a put's body; a truncated body is a bad request."""
    items, off = [], 0
    while off < len(body):
        if off + 40 > len(body):
            raise BadRequest("truncated fragment batch")
        digest = body[off : off + 32].hex()
        (size,) = struct.unpack_from(">Q", body, off + 32)
        off += 40
        if off + size > len(body):
            raise BadRequest("truncated fragment batch")
        items.append((digest, body[off : off + size]))
        off += size
    return items


def encode_digests(digests: Sequence[str]) -> bytes:
    """A get's or delete's body: the raw digests back to back."""
    return b"".join(bytes.fromhex(check_digest(d)) for d in digests)


def decode_digests(body: bytes) -> list[str]:
    if len(body) % 32:
        raise BadRequest("fragment hash list must be a multiple of 32 bytes")
    return [check_digest(body[i : i + 32].hex()) for i in range(0, len(body), 32)]


def encode_found(found: Sequence[bytes | None]) -> bytes:
    """A get's reply: size and bytes per digest asked for (size `MISSING` where absent)."""
    parts = []
    for data in found:
        parts.append(struct.pack(">Q", MISSING if data is None else len(data)))
        if data is not None:
            parts.append(data)
    return b"".join(parts)


def decode_found(body: bytes, count: int) -> list[bytes | None]:
    """The fragments of a get's reply (None where absent); a truncated reply means the server is faulty."""
    out: list[bytes | None] = []
    off = 0
    for _ in range(count):
        if off + 8 > len(body):
            raise BackendDown("fragment server sent a truncated reply")
        (size,) = struct.unpack_from(">Q", body, off)
        off += 8
        if size == MISSING:
            out.append(None)
            continue
        if off + size > len(body):
            raise BackendDown("fragment server sent a truncated reply")
        out.append(body[off : off + size])
        off += size
    return out
