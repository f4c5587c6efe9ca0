"""Manifests: the signed, hash-chained record of one object version, and placement patches.

A manifest names everything a reader or repairer needs: sizes, coding
parameters, per-segment nonce and the hash and backend of every fragment.
It is signed by the writing node (Ed25519) and carries the hash of the
previous version's manifest, so versions form a chain that cannot be edited
in the middle. The store key is sealed under the node's manifest key; the
rest is public, so a repairer needs no data key. Fragment hashes are kept as
raw bytes (base64, one string a segment): a one-segment manifest is about 1.5 KB
instead of 2.2 KB in hex, and it is stored on `replicas` backends (format 2;
format-1 manifests, hex and a [hash, place] pair a fragment, still open).

A placement patch records that a repair moved fragments of a manifest to
other backends; manifests themselves are never rewritten.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import blake3

from hero.errors import IntegrityError
from hero.identity import NodeKeys, verify_signature
from hero.store.pipeline import HEX64

R = TypeVar("R")

MANIFEST_MAGIC = b"HQM1"
PATCH_MAGIC = b"HQR1"  # a placement (relocation) record
EARLIER_PATCH_MAGIC = b"HQP1"  # patches written before they had a magic of their own (a pack record's): still read
SIG_BYTES = 64
HASH_BYTES = 32  # a fragment hash (BLAKE3-256), raw
FORMAT = 2  # manifests written now; format 1 (hashes in hex, one [hash, place] pair a fragment) still opens
OBJECTS = "obj"
NAME = re.compile(r"^(\d{12})\.(m|p\.[0-9a-f]{32})$")


@dataclass(frozen=True)
class SegmentRecord:
    plain: int
    compressed: bool
    nonce: bytes
    sealed: int
    hashes: tuple[str, ...]
    places: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Format 2: the fragment hashes as one base64 string of their raw bytes (half the size of hex)."""
        return {
            "plain": self.plain, "z": self.compressed, "nonce": self.nonce.hex(), "sealed": self.sealed,
            "hashes": base64.b64encode(b"".join(bytes.fromhex(h) for h in self.hashes)).decode(),
            "places": list(self.places),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SegmentRecord:
        if "frags" in raw:  # format 1: [hash hex, place] per fragment
            hashes, places = tuple(str(h) for h, _ in raw["frags"]), tuple(str(p) for _, p in raw["frags"])
        else:
            packed = base64.b64decode(str(raw["hashes"]), validate=True)
            if len(packed) % HASH_BYTES:
                raise ValueError("fragment hashes are not whole hashes")
            hashes = tuple(packed[i : i + HASH_BYTES].hex() for i in range(0, len(packed), HASH_BYTES))
            places = tuple(str(p) for p in raw["places"])
            if len(places) != len(hashes):
                raise ValueError("fragment places do not match the hashes")
        return cls(int(raw["plain"]), bool(raw["z"]), bytes.fromhex(raw["nonce"]), int(raw["sealed"]), hashes, places)


@dataclass(frozen=True)
class Manifest:
    oid: str
    version: int
    epoch: int
    created: float
    prev: str | None
    signer: str
    size: int
    k: int
    m: int
    codec: str
    zstd: int
    sealed_key: bytes
    key_nonce: bytes
    segments: tuple[SegmentRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "oid": self.oid, "version": self.version, "epoch": self.epoch, "created": self.created,
            "prev": self.prev, "signer": self.signer, "size": self.size, "k": self.k, "m": self.m,
            "codec": self.codec, "zstd": self.zstd, "cipher": "xchacha20-poly1305",
            "key": self.sealed_key.hex(), "key_nonce": self.key_nonce.hex(),
            "segments": [s.to_json() for s in self.segments],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        manifest = cls._parse(raw)
        n = manifest.k + manifest.m
        for seg in manifest.segments:
            if len(seg.hashes) != n or not all(HEX64.match(h) for h in seg.hashes):
                raise ValueError("segment fragment list does not match k + m")
        if manifest.prev is not None and not HEX64.match(manifest.prev):
            raise ValueError("bad prev hash")
        if not HEX64.match(manifest.oid) or manifest.version < 1:
            raise ValueError("bad object id or version")
        return manifest

    @classmethod
    def _parse(cls, raw: dict[str, Any]) -> Manifest:
        return cls(
            str(raw["oid"]), int(raw["version"]), int(raw["epoch"]), float(raw["created"]), raw["prev"],
            str(raw["signer"]), int(raw["size"]), int(raw["k"]), int(raw["m"]), str(raw["codec"]), int(raw["zstd"]),
            bytes.fromhex(raw["key"]), bytes.fromhex(raw["key_nonce"]),
            tuple(SegmentRecord.from_json(s) for s in raw["segments"]),
        )

    @property
    def n(self) -> int:
        return self.k + self.m


@dataclass(frozen=True)
class Patch:
    """Fragments of one manifest that now live elsewhere: (segment, index, hash, backend) per move."""

    oid: str
    version: int
    manifest: str
    created: float
    signer: str
    moves: tuple[tuple[int, int, str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1, "oid": self.oid, "version": self.version, "manifest": self.manifest,
            "created": self.created, "signer": self.signer, "moves": [list(m) for m in self.moves],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Patch:
        return cls(
            str(raw["oid"]), int(raw["version"]), str(raw["manifest"]), float(raw["created"]), str(raw["signer"]),
            tuple((int(s), int(i), str(h), str(b)) for s, i, h, b in raw["moves"]),
        )


def digest(blob: bytes) -> str:
    return blake3.blake3(blob).hexdigest()


def _sign(magic: bytes, body: dict[str, Any], keys: NodeKeys) -> bytes:
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    head = magic + struct.pack(">I", len(payload)) + payload
    return head + keys.sign(head)


def _open(magics: tuple[bytes, ...], blob: bytes, trusted: set[str] | None, what: str) -> dict[str, Any]:
    """Parse a signed record; with `trusted`, refuse unknown signers and bad signatures."""
    if len(blob) < 8 + SIG_BYTES or blob[:4] not in magics:
        raise IntegrityError(f"{what} is malformed")
    (size,) = struct.unpack_from(">I", blob, 4)
    if len(blob) != 8 + size + SIG_BYTES:
        raise IntegrityError(f"{what} is truncated or has trailing bytes")
    head, signature = blob[: 8 + size], blob[8 + size :]
    try:
        body = json.loads(head[8:])
        signer = str(body["signer"])
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{what} is malformed") from None
    if trusted is not None:
        if signer not in trusted:
            raise IntegrityError(f"{what} is signed by an untrusted node {signer[:16]}…")
        if not verify_signature(signer, head, signature):
            raise IntegrityError(f"{what} failed its signature check (tampered or corrupt)")
    return body


def sign_manifest(manifest: Manifest, keys: NodeKeys) -> bytes:
    return _sign(MANIFEST_MAGIC, manifest.to_json(), keys)


def open_manifest(blob: bytes, trusted: set[str] | None, what: str = "manifest") -> Manifest:
    return _parsed(Manifest.from_json, _open((MANIFEST_MAGIC,), blob, trusted, what), what)


def sign_patch(patch: Patch, keys: NodeKeys) -> bytes:
    return _sign(PATCH_MAGIC, patch.to_json(), keys)


def open_patch(blob: bytes, trusted: set[str] | None, what: str = "placement patch") -> Patch:
    return _parsed(Patch.from_json, _open((PATCH_MAGIC, EARLIER_PATCH_MAGIC), blob, trusted, what), what)


def _parsed(parse: Callable[[dict[str, Any]], R], body: dict[str, Any], what: str) -> R:
    """A signed body as its record; a body that is signed but not a record is malformed, not a crash."""
    try:
        return parse(body)
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{what} is malformed") from None


VERSION_DIGITS = 12  # zero-padded, so names sort by version


def entry_name(version: int) -> str:
    """A version's manifest within its object directory."""
    return f"{version:0{VERSION_DIGITS}d}.m"


def object_dir(oid: str) -> str:
    return f"{OBJECTS}/{oid}"


def manifest_name(oid: str, version: int) -> str:
    return f"{OBJECTS}/{oid}/{entry_name(version)}"


def patch_name(oid: str, version: int, blob: bytes) -> str:
    return f"{OBJECTS}/{oid}/{version:0{VERSION_DIGITS}d}.p.{digest(blob)[:32]}"


def parse_name(entry: str) -> tuple[int, bool] | None:
    """(version, is_manifest) of an entry in an object directory; None for anything else."""
    found = NAME.match(entry)
    if not found:
        return None
    return int(found.group(1)), found.group(2) == "m"
