"""QSS under faults: lost and rotten fragments, lost backends, tampered manifests, quorum, full disks, kill -9."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero.errors import IntegrityError, StorageError
from hero.store.pipeline import fragment_hash
from hero.store.qss import QSS
from tests.store.helpers import AGENT, StoredFragment, fragment_files, open_store, stored_fragment

ROOT = Path(__file__).resolve().parents[1]


def segment_files(store: QSS, root: Path, resolved) -> list[list[StoredFragment]]:
    """The stored fragments of each segment of a resolved version, in fragment-index order."""
    out = []
    for s, seg in enumerate(resolved.manifest.segments):
        out.append([
            stored_fragment(store.pool.by_name[resolved.places[s][i]].root, h) for i, h in enumerate(seg.hashes)
        ])
    return out


async def resolved_head(store: QSS, key: str):
    oid = store.ring.object_id(key)
    index = await store.index(oid)
    return await store.resolve(oid, index, index.versions()[-1])


def all_fragments_intact(root: Path) -> bool:
    return all(fragment_hash(p.read_bytes()) == p.name for p in fragment_files(root))


async def test_reads_survive_lost_backends_up_to_m(tmp_path: Path):
    store = await open_store(tmp_path, segment_size=64 << 10)
    small, big = b"tiny state", random.randbytes(300_000)
    try:
        await store.put(AGENT + "/state", small, epoch=1)
        await store.put("node/big", big, epoch=1)
        backends = tmp_path / "backends"
        rnd = random.Random(7)
        subsets = [tuple(range(16, 20)), tuple(range(0, 4)), *(tuple(rnd.sample(range(20), 4)) for _ in range(6))]
        for lost in subsets:
            for n in lost:
                (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")
            try:
                assert await store.get(AGENT + "/state") == small
                assert await store.get("node/big") == big
            finally:
                for n in lost:
                    (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")
        for n in range(5):
            (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")
        with pytest.raises(IntegrityError, match="only 15 of the 16 fragments"):
            await store.get(AGENT + "/state")
        for n in range(5):
            (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")
    finally:
        await store.aclose()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32), segments=st.integers(1, 4))
def test_random_byte_flips_are_never_returned_and_a_scrub_heals_all_of_them(seed: int, segments: int):
    rnd = random.Random(seed)
    data = rnd.randbytes(segments * (64 << 10) - rnd.randrange(1000))

    async def run(root: Path) -> None:
        store = await open_store(root, segment_size=64 << 10)
        try:
            await store.put("node/blob", data, epoch=1)
            files = segment_files(store, root, await resolved_head(store, "node/blob"))
            flipped = 0
            for seg_files in files:
                for path in rnd.sample(seg_files, rnd.randint(0, 4)):
                    raw = bytearray(path.read_bytes())
                    raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
                    path.write_bytes(bytes(raw))
                    flipped += 1
            assert await store.get("node/blob") == data
            report = await store.scrub()
            assert (report["corrupt"], report["repaired"], report["missing"]) == (flipped, flipped, 0)
            assert report["checked"] == 20 * len(files)
            assert all_fragments_intact(root / "backends")
            again = await store.scrub()
            assert (again["corrupt"], again["missing"], again["repaired"]) == (0, 0, 0)
        finally:
            await store.aclose()

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(run(Path(root)))


async def test_truncated_foreign_and_missing_fragments_are_detected_and_rebuilt(tmp_path: Path):
    store = await open_store(tmp_path)
    try:
        await store.put("node/other", random.randbytes(5000), epoch=1)
        await store.put(AGENT + "/state", b"the real state " * 300, epoch=1)
        mine = segment_files(store, tmp_path, await resolved_head(store, AGENT + "/state"))[0]
        other = segment_files(store, tmp_path, await resolved_head(store, "node/other"))[0]
        mine[0].write_bytes(mine[0].read_bytes()[:50])
        mine[1].write_bytes(other[1].read_bytes())
        mine[2].unlink()
        mine[19].write_bytes(b"")
        assert await store.get(AGENT + "/state") == b"the real state " * 300
        report = await store.scrub()
        assert (report["corrupt"], report["missing"], report["repaired"]) == (3, 1, 4)
        assert all(fragment_hash(p.read_bytes()) == p.name for p in mine)
    finally:
        await store.aclose()


async def test_manifest_tampering(tmp_path: Path):
    store = await open_store(tmp_path)
    try:
        await store.put(AGENT + "/state", b"v1", epoch=1)
        await store.put(AGENT + "/state", b"v2", epoch=1)
        oid = store.ring.object_id(AGENT + "/state")
        replicas = sorted((tmp_path / "backends").glob(f"*/meta/obj/{oid}/000000000002.m"))
        assert len(replicas) == 5
        original = replicas[0].read_bytes()
        replicas[0].write_bytes(original.replace(b'"epoch":1', b'"epoch":7'))
    finally:
        await store.aclose()
    store = await open_store(tmp_path)
    try:
        assert await store.get(AGENT + "/state") == b"v2"
        report = await store.scrub()
        assert report["manifests_repaired"] == 1
        assert replicas[0].read_bytes() == original
        for path in replicas:
            path.write_bytes(path.read_bytes().replace(b'"size":2', b'"size":3'))
    finally:
        await store.aclose()
    store = await open_store(tmp_path)
    try:
        with pytest.raises(IntegrityError, match="failed its signature check"):
            await store.get(AGENT + "/state")
        assert await store.get(AGENT + "/state", 1) == b"v1"
    finally:
        await store.aclose()


async def test_a_write_below_quorum_fails_and_the_previous_version_stays_head(tmp_path: Path):
    store = await open_store(tmp_path)
    backends = tmp_path / "backends"
    try:
        await store.put(AGENT + "/state", b"previous", epoch=1)
        for n in range(4):
            (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")
        with pytest.raises(StorageError, match=r"only 16 of 20 fragments .* \(need 17\)") as info:
            await store.put(AGENT + "/state", b"next", epoch=1)
        assert "local-00" in info.value.message
        assert [v.version for v in await store.versions(AGENT + "/state")] == [1]
        assert await store.get(AGENT + "/state") == b"previous"
        status = await store.status()
        assert [b["name"] for b in status["backends"] if b["state"] == "down"] == [f"local-0{n}" for n in range(4)]
        assert status["up"] == 16
        for n in range(4):
            (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")
        report = await store.put_report(AGENT + "/state", b"next", epoch=1)
        assert (report.version.version, report.fragments, report.skipped) == (2, 20, {})
        assert (await store.status())["up"] == 20
    finally:
        for n in range(4):
            if (backends / f"gone-{n:02d}").exists():
                (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")
        await store.aclose()


async def test_a_degraded_write_succeeds_and_its_missing_fragments_are_rebuilt(tmp_path: Path):
    store = await open_store(tmp_path)
    backends = tmp_path / "backends"
    for n in (3, 9, 14):
        (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")
    report = await store.put_report(AGENT + "/state", b"degraded but durable" * 100, epoch=1)
    assert report.fragments == 17 and sorted(report.skipped) == ["local-03", "local-09", "local-14"]
    assert "missing" in report.skipped["local-03"]
    await store.aclose()  # runs the queued repair: rebuilt fragments go to healthy backends
    store = await open_store(tmp_path)
    try:
        scrub = await store.scrub()
        assert (scrub["checked"], scrub["missing"], scrub["corrupt"]) == (20, 0, 0)
        assert await store.get(AGENT + "/state") == b"degraded but durable" * 100
    finally:
        await store.aclose()


async def test_reads_queue_repairs_that_the_background_scrubber_runs(tmp_path: Path):
    store = await open_store(tmp_path)
    try:
        await store.start()
        await store.put(AGENT + "/state", b"heal me" * 1000, epoch=1)
        files = segment_files(store, tmp_path, await resolved_head(store, AGENT + "/state"))[0]
        files[5].write_bytes(b"rot")
        files[7].unlink()
        assert await store.get(AGENT + "/state") == b"heal me" * 1000
        deadline = time.monotonic() + 10
        while not all(p.exists() and fragment_hash(p.read_bytes()) == p.name for p in files):
            assert time.monotonic() < deadline, "background repair did not happen"
            await asyncio.sleep(0.02)
        status = await store.status()
        assert status["scrub"]["background"] and status["repairs"]["repaired_total"] == 2
    finally:
        await store.aclose()


async def test_background_pass_runs_when_due_and_respects_its_rate(tmp_path: Path):
    store = await open_store(tmp_path, scrub_rate_mb_s=2.0, scrub_interval_s=3600)
    try:
        await store.put("node/blob", random.randbytes(600_000), epoch=1)
        files = segment_files(store, tmp_path, await resolved_head(store, "node/blob"))[0]
        files[0].write_bytes(b"rot")
        state = tmp_path / "qss" / "scrub.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"last_finished": time.time() - 3600}))
        began = time.monotonic()
        await store.start()
        deadline = began + 20
        while json.loads(state.read_text()).get("last", {}).get("corrupt") != 1:
            assert time.monotonic() < deadline, "scheduled pass did not run"
            await asyncio.sleep(0.05)
        last = json.loads(state.read_text())["last"]
        assert last["repaired"] == 1 and last["bytes"] > 700_000
        assert last["seconds"] >= last["bytes"] / 2e6 * 0.8  # paced at 2 MB/s
        assert fragment_hash(files[0].read_bytes()) == files[0].name
    finally:
        await store.aclose()


async def test_a_full_disk_backend_is_reported_not_fatal(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mount = await asyncio.create_subprocess_exec(
        "mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk), stderr=asyncio.subprocess.PIPE
    )
    _, err = await mount.communicate()
    if mount.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {err.decode().strip()}")
    try:
        data = tmp_path / "data"
        data.mkdir()
        (data / "storage.toml").write_text(
            f'local_backends = 19\n[[backend]]\ndir = "{disk}/qss"\nlocation = "small"\nname = "small-disk"\n'
        )
        store = await open_store(data)
        try:
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            report = await store.put_report("node/blob", random.randbytes(200_000), epoch=1)
            assert report.fragments == 19 and "full" in report.skipped["small-disk"]
            status = await store.status()
            full = next(b for b in status["backends"] if b["name"] == "small-disk")
            assert full["state"] == "full" and full["location"] == "small"
            again = await store.put_report("node/blob", b"next", epoch=1)
            assert again.fragments == 19 and "full" in again.skipped["small-disk"]
            assert await store.get("node/blob") == b"next"
        finally:
            await store.aclose()
    finally:
        umount = await asyncio.create_subprocess_exec("umount", "-l", str(disk))
        await umount.wait()


WRITER = """
import asyncio, os, sys
from pathlib import Path
from hero.identity import NodeKeys
from hero.store.qss import open_qss

async def main():
    data = Path(sys.argv[1])
    store = await open_qss(data, NodeKeys.load_or_create(data), fsync=False)
    await store.put("agent/" + "ab" * 32 + "/state", os.urandom(48 << 20), epoch=1)
    print("finished", flush=True)

asyncio.run(main())
"""


async def test_kill_9_of_a_writer_mid_put_leaves_the_previous_version_intact(tmp_path: Path):
    store = await open_store(tmp_path)
    await store.put(AGENT + "/state", b"the previous version", epoch=1)
    await store.aclose()
    baseline = len(fragment_files(tmp_path / "backends"))
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(tmp_path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while len(fragment_files(tmp_path / "backends")) < baseline + 40:
            assert writer.returncode is None and time.monotonic() < deadline, "writer ended before it was killed"
            await asyncio.sleep(0.002)
        writer.send_signal(signal.SIGKILL)
    finally:
        output, _ = await writer.communicate()
    assert writer.returncode == -signal.SIGKILL and output == b""
    store = await open_store(tmp_path)
    try:
        assert [v.version for v in await store.versions(AGENT + "/state")] == [1]
        assert await store.get(AGENT + "/state") == b"the previous version"
        gc = await store.gc(1, orphan_grace_s=0)
        assert gc["orphans_removed"] >= 40 and gc["versions_removed"] == 0
        assert len(fragment_files(tmp_path / "backends")) == baseline
        next_version = await store.put(AGENT + "/state", b"after the crash", epoch=1)
        assert next_version.version == 2 and await store.get(AGENT + "/state") == b"after the crash"
    finally:
        await store.aclose()


def test_every_four_backend_loss_pattern_on_the_store_layout(tmp_path: Path):
    """All 4,845 ways to lose 4 of 20 backends, on a stored object's real fragment files."""
    from hero.store import pipeline

    async def setup() -> tuple[QSS, list[bytes], object]:
        store = await open_store(tmp_path)
        await store.put(AGENT + "/state", b"small agent state", epoch=1)
        resolved = await resolved_head(store, AGENT + "/state")
        files = segment_files(store, tmp_path, resolved)[0]
        return store, [p.read_bytes() for p in files], resolved

    store, fragments, resolved = asyncio.run(setup())
    m = resolved.manifest
    seg = m.segments[0]
    key = store.ring.data_key(AGENT + "/state")
    codec = store.codec_of(m)
    by_backend = {name: i for i, name in enumerate(resolved.places[0])}
    for lost in itertools.combinations(sorted(by_backend), 4):
        kept = {i: f for i, f in enumerate(fragments) if resolved.places[0][i] not in lost}
        data = pipeline.open_segment(kept, key=key, oid=m.oid, version=m.version, index=0, count=1, codec=codec,
                                     nonce=seg.nonce, compressed=seg.compressed, plain=seg.plain, sealed=seg.sealed)
        assert data == b"small agent state"
    asyncio.run(store.aclose())


async def test_remembered_head_reads_see_other_writers_and_repairs_by_others(tmp_path: Path):
    """A node reads its own last write without listing; another writer's version and another process's
    repair (fragments moved, patch written elsewhere) are still seen."""
    a = await open_store(tmp_path)
    b = await open_store(tmp_path)
    key = AGENT + "/state"
    try:
        await a.put(key, b"first" * 500, epoch=1)
        assert (await a.latest(key))[1] == b"first" * 500
        await b.put(key, b"second" * 500, epoch=1)
        version, data = await a.latest(key)
        assert (version.version, data) == (2, b"second" * 500)
        await a.put(key, b"third" * 500, epoch=1)
        head = await resolved_head(a, key)
        lost = segment_files(a, tmp_path / "backends", head)[0][:4]
        for path in lost:
            path.unlink()
        scrub = await b.scrub()  # another process repairs: rebuilt fragments land where `a` does not expect
        assert scrub["missing"] == 4 and scrub["repaired"] == 4
        for path in segment_files(a, tmp_path / "backends", head)[0][4:8]:
            path.unlink()  # four more lost: the read needs the fragments b rebuilt elsewhere
        assert (await a.latest(key))[1] == b"third" * 500
        assert await a.get(key) == b"third" * 500
    finally:
        await a.aclose()
        await b.aclose()
