"""QSS as a StateStore: versions, fencing, listing, concurrent writers, gc, and what backends can see."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero.errors import BadRequest, NotFound, StaleEpoch, UsageError
from hero.seams.store import StateStore
from hero.store import manifest
from hero.store.packs import PackFiles
from hero.store.pipeline import fragment_hash
from hero.store.qss import QSS, open_qss
from tests.store.helpers import AGENT, agent_key, all_files, fragment_files, open_store


async def test_put_get_versions_keys(tmp_path: Path):
    store: StateStore = await open_store(tmp_path)
    try:
        v1 = await store.put(AGENT + "/state", b"one", epoch=1)
        v2 = await store.put(AGENT + "/state", b"two" * 1000, epoch=1)
        await store.put("node/leases", b"{}", epoch=1)
        assert (v1.version, v2.version) == (1, 2)
        assert (v1.size, v2.size, v2.epoch) == (3, 3000, 1)
        assert await store.get(AGENT + "/state") == b"two" * 1000
        assert await store.get(AGENT + "/state", 1) == b"one"
        assert [v.version for v in await store.versions(AGENT + "/state")] == [1, 2]
        assert await store.versions("agent/nothing/here") == []
        assert await store.keys() == sorted([AGENT + "/state", "node/leases"])
        assert await store.keys("node/") == ["node/leases"]
        with pytest.raises(NotFound, match="no object"):
            await store.get("agent/missing/state")
        with pytest.raises(NotFound, match="no version 7"):
            await store.get(AGENT + "/state", 7)
        with pytest.raises(BadRequest):
            await store.put("../escape", b"x", epoch=1)
    finally:
        await store.aclose()


async def test_versions_survive_reopening_and_nothing_is_overwritten(tmp_path: Path):
    store = await open_store(tmp_path)
    for i in range(3):
        await store.put(AGENT + "/state", f"v{i}".encode(), epoch=1)
    before = {p: p.read_bytes() for p in fragment_files(tmp_path / "backends")}
    await store.aclose()
    store = await open_store(tmp_path)
    try:
        await store.put(AGENT + "/state", b"v3", epoch=1)
        assert [await store.get(AGENT + "/state", n) for n in (1, 2, 3, 4)] == [b"v0", b"v1", b"v2", b"v3"]
        assert all(p.read_bytes() == data for p, data in before.items())
    finally:
        await store.aclose()


async def test_stale_epoch_is_fenced_and_head_does_not_move(tmp_path: Path):
    store = await open_store(tmp_path)
    try:
        await store.put(AGENT + "/state", b"owner 2", epoch=2)
        with pytest.raises(StaleEpoch, match="epoch 1 refused"):
            await store.put(AGENT + "/state", b"old owner", epoch=1)
        await store.put(AGENT + "/state", b"owner 2 again", epoch=2)
        await store.put(AGENT + "/state", b"owner 3", epoch=3)
        assert [v.epoch for v in await store.versions(AGENT + "/state")] == [2, 2, 3]
        assert await store.get(AGENT + "/state") == b"owner 3"
    finally:
        await store.aclose()


@settings(max_examples=15, deadline=None)
@given(
    size=st.one_of(st.just(0), st.integers(1, 70_000), st.integers(70_000, 6 << 20)),
    segment_kib=st.sampled_from([64, 1024, 4096]),
    seed=st.integers(0, 2**32),
)
def test_any_size_round_trips_through_the_store(size: int, segment_kib: int, seed: int):
    rnd = random.Random(seed)
    data = rnd.randbytes(size // 2) + b"compressible agent state " * (size // 50)
    data = data[:size] + rnd.randbytes(max(0, size - len(data)))

    async def run(root: Path) -> None:
        store = await open_store(root, segment_size=segment_kib << 10)
        try:
            version = await store.put("node/blob", data, epoch=1)
            assert version.size == size
            assert await store.get("node/blob") == data
            segments = max(1, -(-size // (segment_kib << 10)))
            assert len(fragment_files(root / "backends")) == 20 * segments
        finally:
            await store.aclose()

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(run(Path(root)))


async def test_one_fragment_per_backend_and_manifests_on_m_plus_one_backends(tmp_path: Path):
    store = await open_store(tmp_path)
    try:
        await store.put(AGENT + "/state", b"spread me" * 500, epoch=1)
        per_backend = Counter(p.backend for p in fragment_files(tmp_path / "backends"))
        assert len(per_backend) == 20 and set(per_backend.values()) == {1}
        oid = store.ring.object_id(AGENT + "/state")
        replicas = list((tmp_path / "backends").glob(f"*/meta/obj/{oid}/*.m"))
        assert len(replicas) == 5
    finally:
        await store.aclose()


async def test_locations_from_config_bound_fragments_per_site(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    lines = ["local_backends = 0"]
    for site in range(5):
        for n in range(4):
            lines += ["[[backend]]", f'dir = "{tmp_path}/nodes/{site}-{n}"', f'location = "site{site}"']
    (data / "storage.toml").write_text("\n".join(lines) + "\n")
    store = await open_store(data)
    try:
        await store.put("node/big", random.randbytes(3 << 20), epoch=1)
        oid = store.ring.object_id("node/big")
        index = await store.index(oid)
        resolved = await store.resolve(oid, index, 1)
        location = {b.name: b.location for b in store.pool.backends}
        for places in resolved.places:
            assert max(Counter(location[p] for p in places).values()) <= 4
        status = await store.status()
        assert status["locations"] == {f"site{i}": {"backends": 4, "up": 4} for i in range(5)}
    finally:
        await store.aclose()


async def test_two_writers_on_the_same_backends_never_fork_a_version(tmp_path: Path):
    a = await open_store(tmp_path)
    b = await open_store(tmp_path)
    try:
        writes = [(a if i % 2 else b).put(AGENT + "/state", f"write {i}".encode(), epoch=1) for i in range(12)]
        results = await asyncio.gather(*writes)
        assert sorted(v.version for v in results) == list(range(1, 13))
        versions = await a.versions(AGENT + "/state")
        assert [v.version for v in versions] == list(range(1, 13))
        contents = {await b.get(AGENT + "/state", n) for n in range(1, 13)}
        assert contents == {f"write {i}".encode() for i in range(12)}
    finally:
        await a.aclose()
        await b.aclose()


async def test_gc_keeps_the_newest_versions_and_sweeps_orphans(tmp_path: Path):
    store = await open_store(tmp_path)
    try:
        for i in range(5):
            await store.put(AGENT + "/state", f"state {i}".encode() * 100, epoch=1)
        await store.put("node/leases", b"x", epoch=1)
        stray = b"left by a killed writer"
        PackFiles(tmp_path / "backends" / "00" / "packs").append([(fragment_hash(stray), stray)])
        report = await store.gc(2, orphan_grace_s=0)
        assert report["versions_removed"] == 3 and report["orphans_removed"] == 1
        assert report["fragments_removed"] == 60 and report["orphan_sweep"] == "done"
        assert [v.version for v in await store.versions(AGENT + "/state")] == [4, 5]
        assert await store.get(AGENT + "/state") == b"state 4" * 100
        assert await store.get("node/leases") == b"x"
        assert len(fragment_files(tmp_path / "backends")) == 20 * 3
        with pytest.raises(BadRequest):
            await store.gc(0)
        again = await store.gc(2, orphan_grace_s=0)
        assert again["versions_removed"] == 0 and again["orphans_removed"] == 0
    finally:
        await store.aclose()


async def test_backends_see_no_plaintext_and_no_key_names(tmp_path: Path):
    marker = b"PLAINTEXT-MARKER-7f3a9c"
    agent_id = "7f3a9c" * 10 + "beef"
    store = await open_store(tmp_path)
    try:
        payload = json.dumps({"note": marker.decode(), "history": ["hi"] * 200}).encode() + marker * 50
        await store.put(f"agent/{agent_id}/state", payload, epoch=1)
        await store.put(f"agent/{agent_id}/timers", marker, epoch=1)
        await store.put("node/incompressible", random.randbytes(100_000) + marker, epoch=1)
        assert marker in await store.get(f"agent/{agent_id}/state")
    finally:
        await store.aclose()
    files = all_files(tmp_path / "backends")
    assert sum(p.suffix == ".pack" for p in files) == 20 and sum(p.suffix == ".m" for p in files) == 15
    for path in files:
        content = path.read_bytes()
        assert marker not in content, path
        assert agent_id.encode() not in content and b"timers" not in content, path
        assert agent_id not in str(path)


async def test_keys_and_state_come_back_from_the_backends_alone(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    config = "local_backends = 0\n" + "".join(
        f'[[backend]]\ndir = "{tmp_path}/nodes/{i:02d}"\nlocation = "rack{i % 5}"\n' for i in range(20)
    )
    (data / "storage.toml").write_text(config)
    states = {agent_key(i, kind): f"{kind} of agent {i}".encode() * (i + 1) for i in range(8)
              for kind in ("state", "timers")}
    store = await open_store(data)
    for key, value in states.items():
        await store.put(key, b"old", epoch=1)
        await store.put(key, value, epoch=2)
    await store.aclose()

    for path in data.iterdir():
        if path.name != "keys":
            path.unlink() if path.is_file() else shutil.rmtree(path)
    assert [p.name for p in data.iterdir()] == ["keys"]
    (data / "storage.toml").write_text(config)  # the deployment tells a fresh node where its storage is

    store = await open_store(data)
    try:
        assert await store.keys() == sorted(states)
        for key, value in states.items():
            assert await store.get(key) == value
            assert [(v.version, v.epoch) for v in await store.versions(key)] == [(1, 1), (2, 2)]
    finally:
        await store.aclose()


async def test_another_master_key_sees_nothing_and_cannot_read(tmp_path: Path):
    data = tmp_path / "data"
    store = await open_store(data)
    await store.put(AGENT + "/state", b"mine", epoch=1)
    await store.aclose()
    other = tmp_path / "other"
    (other / "keys").mkdir(parents=True)
    for name in ("node.ed25519", "node.x25519"):
        (other / "keys" / name).write_bytes((data / "keys" / name).read_bytes())
    config = "local_backends = 0\n" + "".join(
        f'[[backend]]\ndir = "{data}/backends/{i:02d}"\nlocation = "x"\n' for i in range(20)
    )
    (other / "storage.toml").write_text(config)
    thief = await open_store(other)
    try:
        with pytest.raises(Exception, match=r"authentication failed|wrong key"):
            await thief.keys()
        with pytest.raises(NotFound):
            await thief.get(AGENT + "/state")
    finally:
        await thief.aclose()


async def test_config_file_is_checked(tmp_path: Path):
    (tmp_path / "storage.toml").write_text("k = 16\nm = 0\n")
    with pytest.raises(UsageError, match="m >= 1"):
        await open_store(tmp_path)
    (tmp_path / "storage.toml").write_text('[[backend]]\nurl = "ftp://x"\nlocation = "a"\n')
    with pytest.raises(UsageError, match="url must be"):
        await open_store(tmp_path)
    (tmp_path / "storage.toml").write_text("bogus = 1\n")
    with pytest.raises(UsageError, match="unknown setting"):
        await open_store(tmp_path)
    (tmp_path / "storage.toml").write_text("k = [\n")
    with pytest.raises(UsageError):
        await open_store(tmp_path)


async def test_defaults_on_an_empty_data_dir(tmp_path: Path):
    from hero.identity import NodeKeys

    store: QSS = await open_qss(tmp_path / "fresh", NodeKeys.load_or_create(tmp_path / "fresh"))
    try:
        assert (store.config.k, store.config.m, store.config.quorum, store.config.fsync) == (16, 4, 17, True)
        await store.put(AGENT + "/state", b"durable", epoch=1)
        assert await store.get(AGENT + "/state") == b"durable"
        assert len(list((tmp_path / "fresh" / "backends").iterdir())) == 20
        status = await store.status()
        assert status["up"] == 20 and status["codec"].startswith(("isa_l", "liberasurecode"))
    finally:
        await store.aclose()


def test_manifest_names_parse():
    assert manifest.parse_name("000000000012.m") == (12, True)
    assert manifest.parse_name("000000000012.p." + "a" * 32) == (12, False)
    assert manifest.parse_name("12.m") is None and manifest.parse_name("x") is None


async def test_head_and_latest_read_the_newest_version_in_one_lookup(tmp_path):
    from hero.identity import NodeKeys
    from hero.store.qss import open_qss

    qss = await open_qss(tmp_path, NodeKeys.load_or_create(tmp_path))
    try:
        assert await qss.head("agent/x/state") is None and await qss.latest("agent/x/state") is None
        await qss.put("agent/x/state", b"one", epoch=1)
        await qss.put("agent/x/state", b"two!", epoch=3)
        head = await qss.head("agent/x/state")
        assert (head.version, head.epoch, head.size) == (2, 3, 4)
        version, data = await qss.latest("agent/x/state")
        assert version == head and data == b"two!"
    finally:
        await qss.aclose()


async def test_a_writer_that_remembers_its_head_still_sees_other_writers(tmp_path):
    """The remembered head saves listing every version; a newer version by anyone else is still found."""
    from hero.errors import StaleEpoch
    from hero.identity import NodeKeys
    from hero.store.qss import open_qss

    keys = NodeKeys.load_or_create(tmp_path)
    a = await open_qss(tmp_path, keys)
    b = await open_qss(tmp_path, keys)
    try:
        await a.put("agent/y/state", b"a1", epoch=1)
        await b.put("agent/y/state", b"b2", epoch=1)  # a's remembered head (version 1) is now stale
        third = await a.put("agent/y/state", b"a3", epoch=1)
        assert third.version == 3
        chain = await a.versions("agent/y/state")  # raises if version 3 does not follow version 2's digest
        assert [v.version for v in chain] == [1, 2, 3]
        assert await b.get("agent/y/state") == b"a3"
        await b.put("agent/y/state", b"b4", epoch=2)  # a new owner fences the old one out
        with pytest.raises(StaleEpoch):
            await a.put("agent/y/state", b"a5", epoch=1)
        assert await a.get("agent/y/state") == b"b4"
    finally:
        await a.aclose()
        await b.aclose()


async def test_keep_versions_in_storage_toml_trims_old_versions_in_the_background(tmp_path: Path):
    (tmp_path / "storage.toml").write_text("keep_versions = 2\ngc_interval_s = 0.05\n")
    store = await open_store(tmp_path)
    store.retention.first_delay_s = 0
    try:
        for i in range(5):
            await store.put(AGENT + "/state", f"v{i}".encode(), epoch=1)
        await store.start()
        deadline = asyncio.get_running_loop().time() + 10
        while store.retention.removed_total < 3:  # a gc has finished
            assert asyncio.get_running_loop().time() < deadline, "retention gc did not run"
            await asyncio.sleep(0.02)
        assert [v.version for v in await store.versions(AGENT + "/state")] == [4, 5]
        assert await store.get(AGENT + "/state") == b"v4"
        retention = (await store.status())["retention"]
        assert retention["keep_versions"] == 2 and retention["versions_removed_total"] == 3
        await store.put(AGENT + "/state", b"v5", epoch=1)
        assert await store.get(AGENT + "/state") == b"v5"
    finally:
        await store.aclose()
    with pytest.raises(UsageError, match="keep_versions"):
        await open_store(tmp_path, keep_versions=-1)


async def test_fragments_of_the_file_per_fragment_layout_are_adopted_into_packs(tmp_path: Path):
    """A data dir from before pack files keeps its agents: `fragments/<hash>` files move into packs."""
    store = await open_store(tmp_path)
    await store.put(AGENT + "/state", b"from before packs" * 100, epoch=1)
    await store.aclose()
    backends = tmp_path / "backends"
    for fragment in fragment_files(backends):
        loose = backends / fragment.backend / "fragments"
        loose.mkdir(exist_ok=True)
        (loose / fragment.name).write_bytes(fragment.read_bytes())
    for packs in backends.glob("*/packs"):
        shutil.rmtree(packs)
    (backends / "03" / "fragments" / ("ee" * 32)).write_bytes(b"not what its name says")
    store = await open_store(tmp_path)
    try:
        assert await store.get(AGENT + "/state") == b"from before packs" * 100
        assert len(fragment_files(backends)) == 20
        assert [p.name for p in backends.glob("*/fragments/*")] == ["ee" * 32]  # kept for a human to look at
    finally:
        await store.aclose()
