"""Garbage collection: old versions dropped by the operator's word, then fragments nothing refers to.

`Collector.collect(keep)` is `hero storage gc --keep N`: every object of ours
keeps its newest `keep` versions; older manifests, their placement patches and
their fragments go at once. Then, if every backend answered, fragments that no
manifest or patch of any signer names and that are older than a grace period
(a put in flight has not committed its manifest yet) are swept.

`VersionRetention` is the standing form of that word: `keep_versions` in
storage.toml, applied every `gc_interval_s`. Every put makes a version and the
runtime writes about two per chat turn, so without it a long-lived node's
manifests and fragments grow without end. It runs only when `keep_versions` is
set (0, the default, keeps everything).

`Collector.purge(prefix)` is the other word: every object whose key starts with
`prefix` goes whole, every version, placement patch and fragment on every
backend (a user deleting their data asks for this by their agent's prefix; the
store knows nothing of whose keys they are).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hero.errors import BadRequest, HeroError, IntegrityError, StorageError
from hero.nursery import Nursery
from hero.store import manifest
from hero.store.backends.calls import DeleteFragments, DeleteMeta, GetMeta, ListFragments
from hero.store.catalog import Catalog, ObjectIndex, Resolved

log = logging.getLogger("hero.store")
ORPHAN_GRACE_S = 3600.0  # an unreferenced fragment younger than this may belong to a put still in flight
FIRST_RUN_DELAY_S = 60.0  # not at start-up: agents wake first


@dataclass
class GcReport:
    objects: int = 0
    versions_removed: int = 0
    fragments_removed: int = 0
    meta_removed: int = 0
    orphans_removed: int = 0
    orphan_sweep: str = "skipped"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Leftover:
    """What one backend that did not answer a purge may still hold: fragments (by hash) and manifest names."""

    fragments: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)


@dataclass
class PurgeReport:
    prefix: str
    objects: int = 0
    versions_removed: int = 0
    fragments_removed: int = 0
    meta_removed: int = 0
    left: list[str] = field(default_factory=list)  # why something may remain (a backend that did not answer)
    leftovers: dict[str, Leftover] = field(default_factory=dict)  # backend name -> what it may still hold
    listed_all: bool = True  # every backend listed its objects (else one may hold objects nobody else named)
    pending: bool = False  # what is left is recorded and will be purged when its backends answer (`purges.py`)

    @property
    def kept(self) -> bool:
        """Something may remain that nobody will delete (not recorded as `pending`)."""
        return bool(self.left) and not self.pending

    @property
    def unfinished(self) -> bool:
        """A backend that did not answer may still hold something: purging again once it does finishes."""
        return bool(self.leftovers) or not self.listed_all

    def leftover(self, backend: str) -> Leftover:
        return self.leftovers.setdefault(backend, Leftover())

    def to_json(self) -> dict[str, Any]:
        """What a user or operator is told: not the leftovers' hashes and names (the store's own record)."""
        return {k: v for k, v in asdict(self).items() if k not in ("leftovers", "listed_all")}


class Collector:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.pool = catalog.pool

    async def collect(self, keep: int, *, orphan_grace_s: float | None = ORPHAN_GRACE_S) -> GcReport:
        """Drop all but the newest `keep` versions of every object, then fragments nothing refers to."""
        if keep < 1:
            raise BadRequest("gc must keep at least 1 version", field="keep")
        oids, holders, complete = await self.catalog.oids()
        report = GcReport()
        referenced: set[str] = set()
        sweep_ok = complete
        for oid in sorted(oids):
            if await self.catalog.name_of(oid, holders[oid]) is None:
                sweep_ok = sweep_ok and await self._collect_refs(oid, referenced)
                continue
            report.objects += 1
            index = await self.catalog.index(oid)
            sweep_ok = sweep_ok and index.complete
            numbers = index.versions()
            for number in numbers[: max(0, len(numbers) - keep)]:
                await self._drop_version(oid, index, number, report)
            sweep_ok = sweep_ok and await self._collect_refs(oid, referenced)
        if orphan_grace_s is not None and sweep_ok:
            report.orphans_removed = await self._sweep_orphans(referenced, orphan_grace_s)
            report.orphan_sweep = "done"
        elif orphan_grace_s is not None:
            report.orphan_sweep = "skipped: some backend did not answer, so unreferenced fragments are kept"
        return report

    async def purge(self, prefix: str) -> PurgeReport:
        """Delete every object whose key starts with `prefix` (which ends with '/'): all of it, on every backend.

        Objects are found by listing every backend, so one this process never wrote is found too, and one whose
        manifests rotted is found by the name sealed in them. What a backend that did not answer holds stays;
        `left` says so, and purging again once it is back finishes the work.
        """
        if not prefix.endswith("/") or prefix == "/":
            raise BadRequest("a purge prefix must name a folder of keys: end with '/'", field="prefix")
        report = PurgeReport(prefix)
        oids, holders, complete = await self.catalog.oids()
        if not complete:
            report.listed_all = False
            report.left.append("some backend did not list its objects: objects only it holds were not seen")
        for oid in sorted(oids):
            found = await self.catalog.identify(oid, holders[oid])
            if found.key is None or not found.key.startswith(prefix):
                continue
            report.objects += 1
            await self._drop_object(oid, report)
        self.catalog.ring.forget(prefix)
        return report

    async def delete(self, key: str) -> PurgeReport:
        """Delete one object, every version and fragment of it, on every backend."""
        report = PurgeReport(key)
        oid = self.catalog.ring.object_id(key)
        index = await self.catalog.index(oid)
        if index.where:
            report.objects = 1
            await self._drop_object(oid, report, index)
        elif not index.complete:
            report.listed_all = False
            report.left.append(f"some backend did not list {key!r}")
        return report

    async def _drop_object(self, oid: str, report: PurgeReport, index: ObjectIndex | None = None) -> None:
        """Every fragment any version names goes from every backend (not only where the manifest placed it: a
        copy a repair left elsewhere goes too), then every manifest and patch replica."""
        if index is None:
            index = await self.catalog.index(oid)
        if not index.complete:
            report.listed_all = False
            report.left.append(f"object {oid[:16]}…: some backend did not list it")
        hashes: set[str] = set()
        for number in index.versions():
            try:
                resolved = await self.catalog.resolve(oid, index, number)
            except StorageError as exc:
                report.left.append(f"object {oid[:16]}… version {number}: its manifest is unreadable "
                                   f"({exc.message}), so its fragments are left to the orphan sweep")
                continue
            hashes.update(h for seg in resolved.manifest.segments for h in seg.hashes)
            report.versions_removed += 1
        if hashes:
            wanted = sorted(hashes)
            results = await self.pool.fanout([(b, DeleteFragments(wanted)) for b in self.pool.backends])
            for backend, removed in zip(self.pool.backends, results, strict=True):
                if isinstance(removed, int):
                    report.fragments_removed += removed
                else:
                    report.leftover(backend.name).fragments.extend(wanted)
                    report.left.append(f"{backend.name} did not answer: fragments of object {oid[:16]}… may "
                                       "remain there")
        for entry in list(index.where):
            name = f"{manifest.object_dir(oid)}/{entry}"
            for holder in index.drop(entry):
                removed = await self.pool.attempt(self.pool.by_name[holder], DeleteMeta([name]))
                if isinstance(removed, int):
                    report.meta_removed += removed
                else:
                    report.leftover(holder).meta.append(name)
                    report.left.append(f"{holder} did not answer: {name} remains there")
            self.catalog.forget(name)
        self.catalog.forget_object(oid)

    async def prune(self, key: str, keep: int) -> int:
        """Drop all but the newest `keep` versions of one object, with their fragments; how many went."""
        if keep < 1:
            raise BadRequest("prune must keep at least 1 version", field="keep")
        oid = self.catalog.ring.object_id(key)
        index = await self.catalog.index(oid)
        numbers = index.versions()
        report = GcReport(objects=1)
        for number in numbers[: max(0, len(numbers) - keep)]:
            await self._drop_version(oid, index, number, report)
        return report.versions_removed

    async def _drop_version(self, oid: str, index: ObjectIndex, number: int, report: GcReport) -> None:
        resolved: Resolved | None
        try:
            resolved = await self.catalog.resolve(oid, index, number)
        except StorageError as exc:
            log.warning("gc: version %d of %s unreadable (%s); its fragments go with the orphan sweep",
                        number, oid[:16], exc.message)
            resolved = None
        entries = [manifest.entry_name(number), *index.patches(number)]
        for entry in entries:
            name = f"{manifest.object_dir(oid)}/{entry}"
            for holder in index.drop(entry):
                removed = await self.pool.attempt(self.pool.by_name[holder], DeleteMeta([name]))
                if isinstance(removed, int):
                    report.meta_removed += removed
            self.catalog.forget(name)
        if resolved is not None:
            by_backend: dict[str, set[str]] = {}
            for s, seg in enumerate(resolved.manifest.segments):
                for i, frag_hash in enumerate(seg.hashes):
                    for name in {seg.places[i], resolved.places[s][i]}:
                        by_backend.setdefault(name, set()).add(frag_hash)
            for name, hashes in by_backend.items():
                backend = self.pool.by_name.get(name)
                if backend is None:
                    continue
                removed = await self.pool.attempt(backend, DeleteFragments(sorted(hashes)))
                if isinstance(removed, int):
                    report.fragments_removed += removed
        report.versions_removed += 1

    async def _collect_refs(self, oid: str, referenced: set[str]) -> bool:
        """Add every fragment hash named by this object's manifests and patches (any signer); False if unsure."""
        index = await self.catalog.index(oid)
        ok = index.complete
        directory = manifest.object_dir(oid)
        for entry, holders in index.where.items():
            blob = None
            for holder in self.pool.readable_first(holders):
                backend = self.pool.by_name[holder]
                got = await self.pool.attempt(backend, GetMeta(f"{directory}/{entry}"))
                if isinstance(got, bytes):
                    blob = got
                    break
            if blob is None:
                ok = False
                continue
            try:
                if entry.endswith(".m"):
                    for seg in manifest.open_manifest(blob, None).segments:
                        referenced.update(seg.hashes)
                else:
                    referenced.update(move[2] for move in manifest.open_patch(blob, None).moves)
            except IntegrityError:
                ok = False
        return ok

    async def _sweep_orphans(self, referenced: set[str], grace_s: float) -> int:
        cutoff = time.time() - grace_s
        removed = 0
        for backend in self.pool.backends:
            found = await self.pool.attempt(backend, ListFragments())
            if isinstance(found, StorageError):
                continue
            orphans = [f.digest for f in found if f.digest not in referenced and f.mtime < cutoff]
            if orphans:
                count = await self.pool.attempt(backend, DeleteFragments(orphans))
                if isinstance(count, int):
                    removed += count
        return removed


class VersionRetention:
    """The operator's standing `gc --keep N` (`keep_versions`), run every `interval_s` in the store's nursery."""

    def __init__(
        self, collector: Collector, *, keep: int, interval_s: float, first_delay_s: float = FIRST_RUN_DELAY_S
    ) -> None:
        self.collector = collector
        self.keep = keep
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.last: dict[str, Any] | None = None
        self.removed_total = 0
        self._started = False

    def start(self, nursery: Nursery) -> None:
        if self.keep > 0 and not self._started:
            self._started = True
            nursery.spawn(self._run(), name="qss-retention")

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            began = time.time()
            report: dict[str, Any]
            try:
                collected = await self.collector.collect(self.keep)
            except HeroError as exc:  # a backend down, a conflict with a writer: the next run tries again
                log.warning("retention gc (keep %d) failed: %s", self.keep, exc.message)
                report = {"error": exc.message}
            else:
                report = collected.to_json()
                self.removed_total += collected.versions_removed
                if collected.versions_removed or collected.orphans_removed:
                    log.info("retention gc kept %d versions per object: %s", self.keep, report)
            self.last = {"started": began, "seconds": time.time() - began, **report}
            await asyncio.sleep(self.interval_s)

    def status(self) -> dict[str, Any]:
        return {"keep_versions": self.keep, "interval_s": self.interval_s, "last": self.last,
                "versions_removed_total": self.removed_total}
