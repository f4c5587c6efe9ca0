"""Pack indexes are checked, not trusted: a rotten `.idx` entry is dropped, its pack rescanned (the pack is the
truth) and the index written again; no object becomes unreadable and nothing crashes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from hero.store.packs import PackFiles
from hero.store.pipeline import fragment_hash
from tests.store.helpers import AGENT, open_store

STATE = b'{"messages": ["hello"]}' * 300
OTHER = random.Random(3).randbytes(200_000)


def _flip_entries(backend: Path, digests: set[str], positions: range) -> int:
    """Flip `positions` of every index entry of these fragments (an entry starts with the raw digest)."""
    flipped = 0
    for idx in (backend / "packs").glob("*.idx"):
        raw = bytearray(idx.read_bytes())
        for digest in digests:
            at = raw.find(bytes.fromhex(digest))
            if at >= 0:
                for pos in positions:
                    raw[at + pos] ^= 0xFF
                flipped += 1
        idx.write_bytes(bytes(raw))
    return flipped


async def _digests_by_backend(store, key: str) -> dict[str, set[str]]:
    oid = store.ring.object_id(key)
    index = await store.index(oid)
    resolved = await store.resolve(oid, index, index.versions()[-1])
    out: dict[str, set[str]] = {}
    for s, seg in enumerate(resolved.manifest.segments):
        for i, digest in enumerate(seg.hashes):
            out.setdefault(resolved.places[s][i], set()).add(digest)
    return out


@pytest.mark.parametrize("backends", [1, 5, 20])
@pytest.mark.parametrize("positions", [range(32, 35), range(0, 2), range(40, 44)], ids=["offset", "digest", "size"])
async def test_a_flipped_index_entry_loses_nothing(tmp_path: Path, backends: int, positions: range):
    store = await open_store(tmp_path, segment_size=64 << 10)
    try:
        await store.put(AGENT + "/state", STATE, epoch=1)
        await store.put("node/other", OTHER, epoch=1)
        where = await _digests_by_backend(store, AGENT + "/state")
        other = await _digests_by_backend(store, "node/other")
    finally:
        await store.aclose()
    for n in range(backends):
        name = f"local-{n:02d}"
        assert _flip_entries(tmp_path / "backends" / f"{n:02d}", where[name] | other[name], positions) > 0

    store = await open_store(tmp_path, segment_size=64 << 10)
    try:
        assert await store.get(AGENT + "/state") == STATE
        assert await store.get("node/other") == OTHER
        report = await store.scrub()
        assert (report["objects"], report["unrecoverable"], report["missing"], report["corrupt"]) == (2, 0, 0, 0)
    finally:
        await store.aclose()


def _frag(n: int, size: int = 1000) -> tuple[str, bytes]:
    data = n.to_bytes(4, "big") * (size // 4)
    return fragment_hash(data), data


def test_a_bad_entry_is_dropped_the_pack_rescanned_and_the_index_rewritten(tmp_path: Path):
    writer = PackFiles(tmp_path, fsync=False)
    items = [_frag(n) for n in range(20)]
    for start in range(0, 20, 5):
        writer.append(items[start : start + 5])
    writer.close()
    (idx,) = tmp_path.glob("*.idx")
    pristine = idx.read_bytes()
    raw = bytearray(pristine)
    for digest, _ in items[3:9]:
        at = raw.find(bytes.fromhex(digest))
        raw[at + 33] ^= 0x40  # the offset's second byte: far past the end of the pack
    raw[raw.find(bytes.fromhex(items[12][0]))] ^= 1  # a digest no record has
    idx.write_bytes(bytes(raw))

    reader = PackFiles(tmp_path, fsync=False)
    assert reader.read([d for d, _ in items]) == [v for _, v in items]
    assert sorted(d for d, _, _ in reader.entries()) == sorted(d for d, _ in items)
    reader.close()
    assert idx.read_bytes() != bytes(raw)  # the writer is gone: its index was written again from the pack
    again = PackFiles(tmp_path, fsync=False)
    assert again.read([d for d, _ in items]) == [v for _, v in items]
    again.close()


def test_an_index_pointing_into_another_record_never_kills_it(tmp_path: Path):
    """A repair kills the old copy of a fragment by marking its record: through a wrong index entry that mark
    must not land on another fragment's record."""
    writer = PackFiles(tmp_path, fsync=False)
    a, b = _frag(1), _frag(2)
    writer.append([a, b])
    writer.close()
    (idx,) = tmp_path.glob("*.idx")
    raw = bytearray(idx.read_bytes())
    at_a, at_b = raw.find(bytes.fromhex(a[0])), raw.find(bytes.fromhex(b[0]))
    raw[at_a + 32 : at_a + 44] = raw[at_b + 32 : at_b + 44]  # a's entry names b's record
    idx.write_bytes(bytes(raw))
    repairer = PackFiles(tmp_path, fsync=False)
    repairer.append([a], replace=True)
    repairer.close()
    fresh = PackFiles(tmp_path, fsync=False)
    assert fresh.read([a[0], b[0]]) == [a[1], b[1]]
    fresh.close()


def test_a_zeroed_or_truncated_index_is_rebuilt_from_its_pack(tmp_path: Path):
    writer = PackFiles(tmp_path, fsync=False)
    items = [_frag(n, 3000) for n in range(12)]
    writer.append(items)
    writer.close()
    (idx,) = tmp_path.glob("*.idx")
    size = idx.stat().st_size
    for damage in (b"\0" * size, idx.read_bytes()[: size // 3], b"", os.urandom(size)):
        idx.write_bytes(damage)
        reader = PackFiles(tmp_path, fsync=False)
        assert reader.read([d for d, _ in items]) == [v for _, v in items]
        reader.close()


@pytest.mark.parametrize("index_too", [False, True], ids=["index-good", "index-bad"])
@pytest.mark.parametrize("field", [0, 5, 20], ids=["magic", "size", "digest"])
def test_a_rotten_record_header_costs_that_record_only(tmp_path: Path, field: int, index_too: bool):
    """A record header that rots under a good index entry: the read checks the header, walks the pack past
    the bad one (the walk takes only records whose bytes hash to their digest) and loses that record only."""
    writer = PackFiles(tmp_path, fsync=False)
    items = [_frag(n, 2000) for n in range(10)]
    writer.append(items)
    writer.close()
    (pack,) = tmp_path.glob("*.pack")
    (idx,) = tmp_path.glob("*.idx")
    raw = bytearray(pack.read_bytes())
    record = 2040 * 3  # the fourth record's header
    raw[record + field] ^= 0x10
    pack.write_bytes(bytes(raw))
    if index_too:
        entries = bytearray(idx.read_bytes())
        at = entries.find(bytes.fromhex(items[6][0]))
        entries[at + 40] ^= 1  # a later record's index entry is wrong as well
        idx.write_bytes(bytes(entries))

    reader = PackFiles(tmp_path, fsync=False)
    got = reader.read([d for d, _ in items])
    assert got == [v if n != 3 else None for n, (_, v) in enumerate(items)]
    reader.close()
    fresh = PackFiles(tmp_path, fsync=False)
    assert fresh.read([d for d, _ in items]) == got
    assert len(fresh.entries()) == 9
    fresh.close()


def test_a_record_also_held_by_another_pack_survives_a_bad_index_of_this_one(tmp_path: Path):
    """Pack B holds a copy of x (as after a compaction cut short) whose bytes rotted, and B lost its tail after
    its index was written. Walking B finds no x; the reader still finds the good copy in pack A."""
    x, y = _frag(1, 3000), _frag(2, 3000)
    first = PackFiles(tmp_path, fsync=False)
    first.append([x])
    first.close()
    elsewhere = tmp_path / "elsewhere"
    second = PackFiles(elsewhere, fsync=False)  # its stem sorts after the first pack's
    second.append([x, y])
    second.close()
    for path in elsewhere.iterdir():
        path.rename(tmp_path / path.name)
    elsewhere.rmdir()
    b = sorted(tmp_path.glob("*.pack"))[-1]  # the second pack
    raw = bytearray(b.read_bytes())
    raw[100] ^= 0xFF  # x's bytes in the second pack rot
    b.write_bytes(bytes(raw[: len(raw) - 10]))  # and the pack loses its tail: y's index entry points past the end
    reader = PackFiles(tmp_path, fsync=False)
    assert reader.read([x[0], y[0]]) == [x[1], None]
    reader.close()
