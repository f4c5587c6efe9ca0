"""The scrubber alone: built from its own parts (a catalog over a backend pool, a repair queue, CPU workers), no QSS.

Objects are written by a real store that is then closed; the scrubber opens the same
directory backends, with the same node keys, and finds and heals the real fragments on disk.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from hero.identity import NodeKeys
from hero.nursery import Nursery
from hero.store.backends.directory import DirBackend
from hero.store.catalog import Catalog, Resolved
from hero.store.config import QSSConfig
from hero.store.pipeline import fragment_hash
from hero.store.pool import BackendPool
from hero.store.repairs import RepairQueue
from hero.store.scrubber import Scrubber
from tests.store.helpers import AGENT, StoredFragment, open_store, stored_fragment

KEY = AGENT + "/state"


@dataclass
class Alone:
    scrubber: Scrubber
    catalog: Catalog
    repairs: RepairQueue
    data: Path

    async def head(self, key: str) -> Resolved:
        oid = self.catalog.ring.object_id(key)
        index = await self.catalog.index(oid)
        return await self.catalog.resolve(oid, index, index.versions()[-1])

    def fragments(self, resolved: Resolved, segment: int = 0) -> list[StoredFragment]:
        """Where the catalog says each fragment of a segment is, as the files a test damages."""
        hashes = resolved.manifest.segments[segment].hashes
        return [stored_fragment(self.root(resolved.places[segment][i]), h) for i, h in enumerate(hashes)]

    def root(self, backend: str) -> Path:
        return self.data / "backends" / backend.removeprefix("local-")


@asynccontextmanager
async def scrubber_alone(data: Path) -> AsyncIterator[Alone]:
    """The scrubber and what it depends on, over the 20 directory backends a store wrote under `data`."""
    executor = ThreadPoolExecutor(4, thread_name_prefix="test-scrubber")
    backends = [
        DirBackend(data / "backends" / f"{i:02d}", name=f"local-{i:02d}", location="local", executor=executor,
                   fsync=False)
        for i in range(20)
    ]
    pool = BackendPool(backends, executor)
    catalog = Catalog(pool, NodeKeys.load_or_create(data))
    repairs = RepairQueue()
    scrubber = Scrubber(catalog, repairs, cpu=executor, config=QSSConfig(fsync=False),
                        state_file=data / "scrub.json")
    try:
        yield Alone(scrubber, catalog, repairs, data)
    finally:
        await scrubber.aclose()
        await pool.aclose()
        executor.shutdown(wait=True)


async def write(data: Path, objects: dict[str, bytes]) -> None:
    store = await open_store(data)
    try:
        for key, value in objects.items():
            await store.put(key, value, epoch=1)
    finally:
        await store.aclose()


def intact(fragment: StoredFragment) -> bool:
    return fragment.exists() and fragment_hash(fragment.read_bytes()) == fragment.name


async def test_a_queued_repair_rebuilds_lost_and_rotten_fragments_in_place(tmp_path: Path):
    value = random.randbytes(200_000)
    await write(tmp_path, {KEY: value})
    async with scrubber_alone(tmp_path) as alone:
        resolved = await alone.head(KEY)
        files = alone.fragments(resolved)
        files[3].unlink()
        files[11].write_bytes(b"rot")
        assert not intact(files[3]) and not intact(files[11])

        alone.repairs.request(resolved.manifest.oid, resolved.manifest.version, spare=2)
        assert len(alone.repairs) == 1
        await alone.scrubber.drain()

        assert len(alone.repairs) == 0
        assert all(intact(f) for f in files)  # rebuilt on their own backends: no placement patch needed
        record = json.loads((tmp_path / "scrub.json").read_text())
        assert record["repaired_total"] == 2 and record["unrecoverable_total"] == 0
    store = await open_store(tmp_path)
    try:
        assert await store.get(KEY) == value
    finally:
        await store.aclose()


async def test_a_full_pass_checks_every_fragment_of_every_version_and_reports_by_name(tmp_path: Path):
    objects = {KEY: random.randbytes(150_000), "node/other": b"small" * 100}
    await write(tmp_path, objects)
    await write(tmp_path, {KEY: b"second version" * 100})
    async with scrubber_alone(tmp_path) as alone:
        first = await alone.head("node/other")
        alone.fragments(first)[0].write_bytes(b"bitrot")

        report = await alone.scrubber.scrub_pass()

        assert (report.objects, report.versions, report.checked) == (2, 3, 3 * 20)
        assert (report.corrupt, report.missing, report.repaired, report.unrecoverable) == (1, 0, 1, 0)
        assert report.damaged == []
        assert all(intact(f) for f in alone.fragments(first))
        again = await alone.scrubber.scrub_pass()
        assert (again.corrupt, again.missing, again.repaired) == (0, 0, 0)
        status = await alone.scrubber.status()
        assert status["scrub"]["last"]["checked"] == 60 and status["repairs"]["repaired_total"] == 1


async def test_fragments_of_a_lost_backend_move_and_a_placement_patch_records_where(tmp_path: Path):
    await write(tmp_path, {KEY: random.randbytes(100_000)})
    async with scrubber_alone(tmp_path) as alone:
        resolved = await alone.head(KEY)
        lost = resolved.places[0][5]
        (alone.root(lost) / "packs").rename(alone.root(lost) / "gone")  # its disk is gone: the backend is down

        report = await alone.scrubber.scrub_pass()

        assert report.missing == 1 and report.repaired == 1
        moved = await alone.head(KEY)  # the catalog reads the patch the scrubber wrote
        assert moved.places[0][5] != lost and moved.places[0][5] in {b.name for b in alone.catalog.pool.backends}
        assert intact(alone.fragments(moved)[5])
        patches = list((alone.data / "backends").glob(f"*/meta/obj/{resolved.manifest.oid}/*.p.*"))
        assert patches, "no placement patch was written"


async def test_an_object_with_too_few_fragments_is_damaged_by_name_and_the_rest_are_healed(tmp_path: Path):
    await write(tmp_path, {KEY: random.randbytes(50_000), "node/fine": random.randbytes(50_000)})
    async with scrubber_alone(tmp_path) as alone:
        for fragment in alone.fragments(await alone.head(KEY))[:5]:  # m + 1 lost: beyond what RS 16+4 rebuilds
            fragment.unlink()
        fine = alone.fragments(await alone.head("node/fine"))
        fine[0].unlink()

        report = await alone.scrubber.scrub_pass()

        assert report.damaged_objects == 1 and [d.key for d in report.damaged] == [KEY]
        assert "only 15 of the 16 fragments" in report.damaged[0].error
        assert report.unrecoverable == 5 and report.repaired == 1
        assert intact(fine[0])


async def test_in_the_background_a_request_wakes_the_scrubber_and_closing_drains_the_queue(tmp_path: Path):
    await write(tmp_path, {KEY: b"wake me" * 1000, "node/later": b"later" * 1000})
    async with scrubber_alone(tmp_path) as alone:
        nursery = Nursery("test-scrubber")
        alone.scrubber.start(nursery)  # no full pass is due yet: it waits on the queue
        try:
            resolved = await alone.head(KEY)
            files = alone.fragments(resolved)
            files[2].unlink()
            alone.repairs.request(resolved.manifest.oid, resolved.manifest.version, spare=3)
            deadline = time.monotonic() + 10
            while not intact(files[2]):
                assert time.monotonic() < deadline, "the queued repair did not run"
                await asyncio.sleep(0.02)
            assert (await alone.scrubber.status())["scrub"]["background"]
        finally:
            await nursery.aclose()
        later = await alone.head("node/later")
        alone.fragments(later)[9].unlink()
        alone.repairs.request(later.manifest.oid, later.manifest.version, spare=3)
        await alone.scrubber.aclose()  # the loop is stopped; what is still queued runs now
        assert intact(alone.fragments(later)[9]) and len(alone.repairs) == 0
        assert json.loads((tmp_path / "scrub.json").read_text())["repaired_total"] == 2  # kept where it was told
