"""Every on-disk structure a directory backend reads, damaged on 1, 4 and 5 of 20 backends.

File kinds: pack records (`.pack`), pack indexes (`.idx`), deletion lists (`.del`), manifests (`*.m`) and
placement records (`*.p.*`). Damage: a flipped byte, zeroes, a truncation, at a place hypothesis picks. The
store is then read and scrubbed by a fresh process, as after a restart. Never a traceback and never wrong
bytes; the verdict is right: with damage on up to 4 backends every object reads back and the scrub repairs
everything (a second scrub finds nothing); beyond that (the records or every manifest replica of one object
on 5 backends) that object fails with a clean storage error naming it and the scrub reports it as damaged.
Throughout, scrub and reads agree: an object reads back if and only if the scrub did not list it as damaged.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from hero.errors import StorageError
from hero.store.packs import HEADER, MAGIC
from hero.store.qss import QSS
from tests.store.helpers import AGENT, open_store

KINDS = ["pack", "idx", "del", "manifest", "patch"]
BEYOND = {"pack", "manifest"}  # damage on 5 backends that loses an object (the others lose nothing)
TARGET, PATCHED, OTHER = AGENT + "/state", "node/patched", AGENT + "/timers"
SEGMENT = 64 << 10


@dataclass(frozen=True)
class Layout:
    """The pristine store, and where the target's fragments and the replicas of each object live."""

    root: Path
    objects: dict[str, bytes] = field(repr=False)
    fragments: list[list[tuple[str, str]]] = field(repr=False)  # per segment of TARGET: (backend, digest) each
    holders: dict[str, list[str]] = field(repr=False)  # key -> backends holding its manifest (and patch) replicas


def _backend_dir(name: str) -> str:
    return name.removeprefix("local-")


async def _build(root: Path) -> Layout:
    rnd = random.Random(5)
    objects = {TARGET: rnd.randbytes(3 * SEGMENT - 100), PATCHED: b"placed by a repair " * 40, OTHER: b"[]"}
    backends = root / "backends"
    store = await open_store(root, segment_size=SEGMENT)
    try:
        await store.put(TARGET, b"the version gc removes" * 100, epoch=1)
        await store.put(TARGET, objects[TARGET], epoch=1)
        await store.put(OTHER, objects[OTHER], epoch=1)
        (backends / "19").rename(backends / "away")
        await store.put(PATCHED, objects[PATCHED], epoch=1)  # 19 fragments: the repair places the 20th
        (backends / "away").rename(backends / "19")
        await store.scrubber.drain()  # writes a placement patch
        gc = await store.gc(1, orphan_grace_s=None)  # kills the first version's records: `.del` files
        assert gc["versions_removed"] == 1 and gc["fragments_removed"] == 20
        oid = store.ring.object_id(TARGET)
        index = await store.index(oid)
        resolved = await store.resolve(oid, index, index.versions()[-1])
        fragments = [
            [(_backend_dir(resolved.places[s][i]), h) for i, h in enumerate(seg.hashes)]
            for s, seg in enumerate(resolved.manifest.segments)
        ]
        holders = {}
        for key in objects:
            found = sorted(backends.glob(f"*/meta/obj/{store.ring.object_id(key)}/*.m"))
            holders[key] = sorted({p.parents[3].name for p in found})
            assert len(holders[key]) == 5
        patched = store.ring.object_id(PATCHED)
        assert len(list(backends.glob(f"*/meta/obj/{patched}/*.p.*"))) == 5
    finally:
        await store.aclose()
    for name in ("pack", "idx", "del"):
        assert len(list(backends.glob(f"*/packs/*.{name}"))) == 20, name
    return Layout(root, objects, fragments, holders)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return asyncio.run(_build(tmp_path_factory.mktemp("fuzz-layout")))


def _damage(path: Path, op: str, start: int, end: int, rnd: random.Random) -> None:
    """Flip one bit of a byte in [start, end), zero all of it, or truncate the file somewhere in it."""
    raw = bytearray(path.read_bytes())
    end = min(end, len(raw))
    if end <= start:
        return
    if op == "flip":
        raw[rnd.randrange(start, end)] ^= 1 << rnd.randrange(8)
    elif op == "zero":
        raw[start:end] = bytes(end - start)
    else:
        del raw[rnd.randrange(start, end) :]
    path.write_bytes(bytes(raw))


def _record(pack_dir: Path, digest: str) -> tuple[Path, int, int]:
    """The pack file and byte range of the record holding this fragment."""
    for pack in pack_dir.glob("*.pack"):
        raw = pack.read_bytes()
        at = raw.find(bytes.fromhex(digest))
        if at >= 4 and raw[at - 8 : at - 4] == MAGIC:
            size = int.from_bytes(raw[at - 4 : at], "big")
            return pack, at - 8, at - 8 + HEADER.size + size
    raise AssertionError(f"no record of {digest[:16]}")


def _break(work: Path, layout: Layout, kind: str, op: str, n: int, rnd: random.Random) -> None:
    backends = work / "backends"
    if kind == "pack":  # the same segment's fragment of the target, on n backends
        segment = rnd.choice(layout.fragments)
        for backend, digest in rnd.sample(segment, n):
            pack, start, end = _record(backends / backend / "packs", digest)
            _damage(pack, op, start, end, rnd)
    elif kind in ("idx", "del"):
        for backend in rnd.sample(sorted(p.name for p in backends.iterdir()), n):
            for path in (backends / backend / "packs").glob(f"*.{kind}"):
                _damage(path, op, 0, path.stat().st_size, rnd)
    else:  # every manifest (or placement record) on n of the replica holders of one object
        key = TARGET if kind == "manifest" else PATCHED
        pattern = "*.m" if kind == "manifest" else "*.p.*"
        for backend in rnd.sample(layout.holders[key], n):
            for path in (backends / backend / "meta").glob(f"obj/*/{pattern}"):
                _damage(path, op, 0, path.stat().st_size, rnd)


async def _readable(store: QSS, objects: dict[str, bytes]) -> set[str]:
    """Keys that read back exactly; any other outcome must be a clean storage error naming the key."""
    ok = set()
    for key, data in objects.items():
        try:
            got = await store.get(key)
        except StorageError as exc:
            assert key in exc.message, exc.message
            continue
        assert got == data, f"{key}: wrong bytes returned"
        ok.add(key)
    return ok


async def _check(work: Path, layout: Layout, kind: str, n: int) -> None:
    store = await open_store(work, segment_size=SEGMENT)
    try:
        before = await _readable(store, layout.objects)
        report = await store.scrub()
        after = await _readable(store, layout.objects)
        oids = {store.ring.object_id(key): key for key in layout.objects}
        damaged = {oids[d["oid"]] for d in report["damaged"]}
        assert report["objects"] == 3
        assert before <= after
        assert after == set(layout.objects) - damaged, (after, report["damaged"])
        if n <= 4 or kind not in BEYOND:
            assert after == set(layout.objects) and report["damaged_objects"] == 0, report
            again = await store.scrub()
            assert (again["corrupt"], again["missing"], again["manifests_repaired"]) == (0, 0, 0), again
            assert (again["unrecoverable"], again["damaged_objects"]) == (0, 0), again
        else:
            assert TARGET not in after and TARGET in damaged, report
            assert all(d["error"] and d["key"] in (oids[d["oid"]], None) for d in report["damaged"]), report
    finally:
        await store.aclose()


@pytest.mark.parametrize("n", [1, 4, 5])
@pytest.mark.parametrize("op", ["flip", "zero", "truncate"])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=1, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2**32 - 1))
def test_damage_to_any_file_kind_gets_the_right_verdict(
    layout: Layout, tmp_path_factory: pytest.TempPathFactory, kind: str, op: str, n: int, seed: int
):
    work = tmp_path_factory.mktemp(f"fuzz-{kind}-{op}-{n}")
    shutil.rmtree(work)
    shutil.copytree(layout.root, work)
    try:
        _break(work, layout, kind, op, n, random.Random(seed))
        asyncio.run(_check(work, layout, kind, n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
