"""One segment's way to fragments and back: zstd -> XChaCha20-Poly1305 -> Reed–Solomon -> BLAKE3.

These are plain CPU-bound functions; QSS runs them in its executor. The
associated data binds the ciphertext to its object id, version, segment
position and coding parameters, so fragments cannot be swapped between
objects, segments or versions, nor replayed as a newer version.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from hero.errors import IntegrityError
from hero.store import crypto
from hero.store.erasure import Codec

HEX64 = re.compile(r"^[0-9a-f]{64}$")  # a BLAKE3-256 hash in hex: how fragments and objects are named
AD_MAGIC = b"hero-qss/1"
# Ciphertext is padded with random bytes to a multiple of k * 64 before coding: then no fragment is
# all zero padding, so no two fragments anywhere are byte-identical (gc deletes by hash; it must never
# delete a fragment another version shares).
PAD_ALIGN = 64
_local = threading.local()


def fragment_hash(data: bytes | memoryview) -> str:
    """A fragment's content address (BLAKE3-256, hex)."""
    return blake3.blake3(data).hexdigest()


def associated_data(
    *, oid: str, version: int, index: int, count: int, k: int, m: int, codec: str, compressed: bool, plain: int
) -> bytes:
    return b"".join(
        (
            AD_MAGIC,
            bytes.fromhex(oid),
            struct.pack(">QIIHHBQ", version, index, count, k, m, int(compressed), plain),
            codec.encode(),
        )
    )


@dataclass(frozen=True)
class SealedSegment:
    plain: int
    compressed: bool
    nonce: bytes
    sealed: int
    fragments: list[bytes]
    hashes: list[str]


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    found = cache.get(level)
    if found is None:
        found = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def seal_segment(
    plain: bytes | memoryview, *, key: bytes, oid: str, version: int, index: int, count: int, codec: Codec, level: int
) -> SealedSegment:
    """Compress (kept only if it saves space), encrypt, pad, erasure-code and hash one segment."""
    compressed = _compressor(level).compress(plain)
    use_compressed = len(compressed) < len(plain)
    body = compressed if use_compressed else bytes(plain)
    ad = associated_data(
        oid=oid, version=version, index=index, count=count, k=codec.k, m=codec.m, codec=codec.ec_type,
        compressed=use_compressed, plain=len(plain),
    )
    nonce, ciphertext = crypto.seal(key, body, ad)
    fragments = codec.encode(ciphertext + os.urandom(-len(ciphertext) % (codec.k * PAD_ALIGN)))
    return SealedSegment(
        plain=len(plain), compressed=use_compressed, nonce=nonce, sealed=len(ciphertext), fragments=fragments,
        hashes=[fragment_hash(f) for f in fragments],
    )


def open_segment(
    fragments: dict[int, bytes], *, key: bytes, oid: str, version: int, index: int, count: int, codec: Codec,
    nonce: bytes, compressed: bool, plain: int, sealed: int,
) -> bytes:
    """The inverse of seal_segment, from any k verified fragments."""
    ciphertext = codec.decode(fragments)[:sealed]
    ad = associated_data(
        oid=oid, version=version, index=index, count=count, k=codec.k, m=codec.m, codec=codec.ec_type,
        compressed=compressed, plain=plain,
    )
    body = crypto.unseal(key, nonce, ciphertext, ad, what=f"segment {index} of version {version}")
    data = _plaintext(body, compressed=compressed, plain=plain, index=index, version=version)
    return data if isinstance(data, bytes) else bytes(data)


def open_segment_into(
    out: memoryview, fragments: dict[int, bytes], *, key: bytes, oid: str, version: int, index: int, count: int,
    codec: Codec, nonce: bytes, compressed: bool, plain: int, sealed: int,
) -> None:
    """`open_segment` writing the plaintext into `out` (`plain` bytes), so an object is assembled without copies.

    The body is decompressed straight into `out`: no bytes object per segment and no join.
    """
    decoded = codec.decode(fragments)
    ad = associated_data(
        oid=oid, version=version, index=index, count=count, k=codec.k, m=codec.m, codec=codec.ec_type,
        compressed=compressed, plain=plain,
    )
    body = crypto.unseal(key, nonce, decoded[:sealed], ad, what=f"segment {index} of version {version}")
    if not (compressed and _decompress_into(body, out, plain)):
        out[:] = _plaintext(body, compressed=compressed, plain=plain, index=index, version=version)


def _plaintext(
    body: bytes | memoryview, *, compressed: bool, plain: int, index: int, version: int
) -> bytes | memoryview:
    """The decrypted body decompressed (if it was compressed) and checked against its recorded length."""
    if not compressed:
        data = body
    else:
        try:
            data = _decompressor().decompress(body, max_output_size=plain)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"segment {index} of version {version}: decompression failed: {exc}") from None
    if len(data) != plain:
        raise IntegrityError(f"segment {index} of version {version}: expected {plain} bytes, got {len(data)}")
    return data


def _decompress_into(body: bytes | memoryview, out: memoryview, plain: int) -> bool:
    """Decompress one frame straight into `out`; False if it does not hold exactly `plain` bytes.

    On False the caller decompresses the ordinary way, which reports what is wrong.
    """
    try:
        if zstandard.frame_content_size(body) != plain:
            return False
        with _decompressor().stream_reader(body, read_across_frames=False) as reader:
            filled = 0
            while filled < plain and (got := reader.readinto(out[filled:])):
                filled += got
            return filled == plain
    except zstandard.ZstdError:
        return False
