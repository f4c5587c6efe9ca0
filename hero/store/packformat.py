"""The bytes of a pack directory: records in `.pack`, checksummed entries in `.idx`, kills in `.del`.

A pack is a run of records, each a header (magic, size, BLAKE3 digest of the bytes) and the bytes; a
killed record's magic is `DEAD`. The pack is the truth. Its index only saves reading it, so an index is
never trusted blindly: it starts with `INDEX_MAGIC`, and each entry (digest, offset, size) ends with the
CRC-32 of the whole index up to that point, so a run of entries read at once is checked with one CRC call
(`checked_state`). An index that fails the check, or that has no magic (written before entries carried
checksums), is set aside and its pack walked instead (`walk`). A walk takes only records whose bytes
hash to their digest; past anything else (rot, a torn write) it looks for the next such record, so one
bad header costs one record, not the rest of the pack.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from hero.store.pipeline import fragment_hash

MAGIC = b"HQP1"
DEAD = b"HQPX"  # a killed record's magic, so a process that still thinks it is live reads it as gone
HEADER = struct.Struct(">4sI32s")  # magic, size, raw BLAKE3 digest
INDEX_MAGIC = b"HQI2"  # an index whose entries carry checksums
BODY = struct.Struct(">32sQI")  # raw digest, offset of the header in the pack, size
ENTRY = struct.Struct(">32sQII")  # BODY + CRC-32 of the index file up to here
KILL = struct.Struct(">32sQ")  # raw digest, offset of the dead record's header
INDEX_START = zlib.crc32(INDEX_MAGIC)  # the running CRC after the magic
LIMIT = 1 << 40  # offsets and sizes are kept in 40 bits each (`PackFiles._where`)


def index_entries(records: Iterable[tuple[bytes, int, int]], state: int) -> tuple[list[bytes], int]:
    """Index entries for (raw digest, offset, size) records appended after running CRC `state`; the new state."""
    out = []
    crc = zlib.crc32
    for raw, offset, size in records:
        body = BODY.pack(raw, offset, size)
        state = crc(body, state)
        tail = state.to_bytes(4, "big")
        out.append(body + tail)
        state = crc(tail, state)
    return out, state


def checked_state(chunk: bytes, state: int) -> int | None:
    """The running CRC after `chunk` (whole entries read after `state`), or None if any entry in it is damaged.

    The last entry's CRC covers every byte before it, so one C call checks the run.
    """
    if not chunk:
        return state
    if len(chunk) % ENTRY.size or zlib.crc32(memoryview(chunk)[:-4], state) != int.from_bytes(chunk[-4:], "big"):
        return None
    return zlib.crc32(memoryview(chunk)[-4:], int.from_bytes(chunk[-4:], "big"))


def write_index(path: str, records: Iterable[tuple[bytes, int, int]]) -> tuple[int, int]:
    """Write a whole index (to a temp name, then over `path`); its length and running CRC."""
    entries, state = index_entries(records, INDEX_START)
    tmp = f"{path}-tmp"
    with open(tmp, "wb") as f:
        f.write(INDEX_MAGIC + b"".join(entries))
    os.replace(tmp, path)
    return len(INDEX_MAGIC) + len(entries) * ENTRY.size, state


@dataclass
class Walk:
    """What a walk of a pack found: its records (raw digest, offset, size, live) and where it stopped."""

    records: list[tuple[bytes, int, int, bool]] = field(default_factory=list)
    end: int = 0
    skipped: int = 0  # bytes that were not a record (rot, a torn write), dead space


def walk(path: str, start: int, *, finished: bool) -> Walk:
    """The records of a pack from `start` whose bytes hash to their digest.

    At anything else, a pack still being written (`finished` false) stops: the rest may be in flight.
    A finished one is searched onward for the next true record, and the walk ends at the end of the file.
    """
    found = Walk(end=start)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return found
    try:
        size = os.fstat(fd).st_size
        if size > start:
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
                _walk(view, size, start, finished, found)
    finally:
        os.close(fd)
    return found


def _walk(view: mmap.mmap, size: int, pos: int, finished: bool, found: Walk) -> None:
    while pos < size:
        record = _record_at(view, size, pos)
        if record is not None:
            found.records.append(record)
            pos += HEADER.size + record[2]
            continue
        if not finished:
            break
        nxt = _next_record(view, size, pos + 1)
        found.skipped += nxt - pos
        pos = nxt
    found.end = pos


def _record_at(view: mmap.mmap, size: int, pos: int) -> tuple[bytes, int, int, bool] | None:
    """(raw digest, offset, size, live) of a true record at `pos`: a whole one, its bytes hashing to its digest."""
    if pos + HEADER.size > size:
        return None
    magic, length, digest = HEADER.unpack_from(view, pos)
    end = pos + HEADER.size + length
    if magic not in (MAGIC, DEAD) or end > size or fragment_hash(view[pos + HEADER.size : end]) != digest.hex():
        return None
    return digest, pos, length, magic == MAGIC


def _next_record(view: mmap.mmap, size: int, pos: int) -> int:
    """The offset of the next true record at or after `pos` (`size` if there is none)."""
    while pos < size:
        hits = [at for at in (view.find(MAGIC, pos), view.find(DEAD, pos)) if at >= 0]
        if not hits:
            return size
        at = min(hits)
        if _record_at(view, size, at) is not None:
            return at
        pos = at + 1
    return size
