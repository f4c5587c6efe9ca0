"""The write path: a new version sealed, spread over the backends and committed by a signed manifest.

An object version is cut into segments; each is compressed, sealed under its
agent's key, Reed–Solomon coded into k + m fragments and placed one per backend,
balanced over locations. Windows of segments are sealed on the CPU workers
while the previous window's fragments go to the backends. The version commits
when a majority of its manifest's replica targets created it put-if-absent, so
two writers can never both win one number; a write with an older epoch than
the head's is refused (fencing). A version stored with fewer fragments or
replicas than it should is queued for repair.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hero.errors import BadRequest, Conflict, StaleEpoch, StorageError
from hero.seams.store import Version
from hero.store import erasure, manifest, pipeline
from hero.store.backends.calls import DeleteFragments, DeleteMeta, GetMeta, PutFragments, PutMeta
from hero.store.base import check_key
from hero.store.catalog import Catalog, Head, MetaRead
from hero.store.config import QSSConfig
from hero.store.manifest import Manifest
from hero.store.placement import place, replica_targets
from hero.store.pool import Job
from hero.store.repairs import RepairQueue
from hero.store.workers import WINDOW_BYTES, Progress, Workers, settle

log = logging.getLogger("hero.store")
INLINE_SEAL_BYTES = 64 << 10  # objects this small are sealed on the event loop (~0.1-0.3 ms), not in a thread
UNPLACED = ""  # the place of a fragment no backend could take at write time; the repair queue places it


@dataclass
class WriteReport:
    version: Version
    fragments: int
    expected: int
    skipped: dict[str, str]
    manifest_replicas: int

    def to_json(self) -> dict[str, Any]:
        v = self.version
        return {
            "key": v.key, "version": v.version, "size": v.size, "epoch": v.epoch, "created": v.created,
            "fragments": self.fragments, "expected": self.expected, "manifest_replicas": self.manifest_replicas,
            "skipped": self.skipped,
        }


class VersionTaken(Exception):
    """Another writer committed this version number first."""


class Writer:
    def __init__(
        self, catalog: Catalog, repairs: RepairQueue, workers: Workers, *, config: QSSConfig, ec_type: str
    ) -> None:
        self.catalog = catalog
        self.pool = catalog.pool
        self.repairs = repairs
        self.workers = workers
        self.config = config
        self.ec_type = ec_type
        self._locks: dict[str, asyncio.Lock] = {}

    async def put(self, key: str, data: bytes, *, epoch: int, progress: Progress | None = None,
                  expect: int | None = None) -> WriteReport:
        """Store the next version of `key`; the report says which backends were skipped.

        With `expect` (the version the caller read; 0: none), only as the version after it: Conflict if
        the object has moved on since (a compare-and-set, for read-modify-write callers).
        """
        check_key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadRequest("store data must be bytes")
        oid = self.catalog.ring.object_id(key)
        lock = self._locks.setdefault(oid, asyncio.Lock())
        async with lock:
            for attempt in range(8):
                # This node's own last commit, checked for newer versions by the write itself (`_write`).
                head = self.catalog.committed(oid) if attempt == 0 else None
                probe = head is not None
                if head is None:
                    resolved = await self.catalog.head(oid, await self.catalog.index(oid))
                    head = Head.of(resolved) if resolved else None
                if head is not None and head.epoch > epoch:
                    raise StaleEpoch(f"write to {key} with epoch {epoch} refused: head has epoch {head.epoch}")
                version = head.version + 1 if head else 1
                if expect is not None and version != expect + 1:
                    if probe:
                        continue  # only this node's memory of the head: read the real one
                    raise Conflict(f"{key} changed since version {expect} was read (now {version - 1})")
                try:
                    report = await self._write(key, oid, version, epoch, head, data, progress, probe=probe)
                except VersionTaken:
                    if expect is not None:
                        raise Conflict(f"{key} changed since version {expect} was read") from None
                    self.catalog.forget_head(oid)
                    log.info("version %d of %s was taken by another writer; retrying", version, key)
                    continue
                return report
            raise Conflict(f"could not commit a version of {key}: other writers keep taking the next number")

    async def _write(
        self, key: str, oid: str, version: int, epoch: int, head: Head | None, data: bytes,
        progress: Progress | None, *, probe: bool = False,
    ) -> WriteReport:
        """Seal, store and commit one version.

        With `probe`, `head` is only what this node last committed: the first window's
        fragment writes also ask every backend for a manifest of `version`, in the same
        round trip, and a hit means another writer got there first (`VersionTaken`).
        A one-window object is made durable in that same round; larger ones sync once
        at the end. Small segments are sealed on the loop: cheaper than a thread hop.
        """
        cfg = self.config
        codec = erasure.codec(cfg.k, cfg.m, self.ec_type)
        view = memoryview(data).cast("B")
        seg_size = cfg.segment_size
        count = max(1, math.ceil(len(view) / seg_size))
        per_window = max(1, WINDOW_BYTES // seg_size)
        data_key = self.catalog.ring.data_key(key)
        # At most this many fragments of a segment on one backend: 1 with >= k + m backends, so losing a
        # backend loses one fragment; doubling up only where fewer backends are configured than fragments.
        cap = math.ceil(codec.n / len(self.pool.backends))
        writable = {b.name for b in self.pool.writable()}
        if cap * len(writable) < cfg.quorum:
            # Too few for a write: before refusing it, ask the backends in back-off whether they are back.
            resting = [b for b in self.pool.backends if b.name not in writable]
            await self.pool.fanout([(b, GetMeta(manifest.manifest_name(oid, version))) for b in resting])
            writable = {b.name for b in self.pool.writable() + [b for b in resting if self.pool.is_up(b.name)]}
        skipped = {n: h.error or h.state for n, h in self.pool.health.items() if n not in writable}
        slots = [s for s in self.pool.slots if s.name in writable]
        placeable = min(codec.n, cap * len(slots))
        if placeable < cfg.quorum:
            raise StorageError(
                f"write of {key} failed: only {placeable} of {codec.n} fragments can be stored (need {cfg.quorum}); "
                + _skipped_text(skipped)
            )

        sync_each = count <= per_window

        def seal(i: int) -> pipeline.SealedSegment:
            return pipeline.seal_segment(
                view[i * seg_size : (i + 1) * seg_size], key=data_key, oid=oid, version=version, index=i,
                count=count, codec=codec, level=cfg.zstd_level,
            )

        records: list[manifest.SegmentRecord] = []
        written: dict[str, list[str]] = {}
        failed: set[str] = set()
        loop = asyncio.get_running_loop()
        # Segments are sealed ahead of the writer, one job each, so every CPU worker compresses while
        # the previous window's fragments go to the backends.
        ahead = per_window * max(2, cfg.cpu_workers)
        pending: deque[asyncio.Future[pipeline.SealedSegment]] = deque()
        submitted = 0
        try:
            for first in range(0, count, per_window):
                if len(view) <= INLINE_SEAL_BYTES:
                    sealed = [seal(0)]
                else:
                    while submitted < count and len(pending) < ahead:
                        pending.append(loop.run_in_executor(self.workers.cpu, seal, submitted))
                        submitted += 1
                    sealed = [await pending.popleft() for _ in range(min(per_window, count - first))]
                plans = [
                    place(slots, placeable, f"{oid}/{first + i}") + [UNPLACED] * (codec.n - placeable)
                    for i in range(len(sealed))
                ]
                check = (oid, version) if probe and first == 0 else None
                failed |= await self._store(sealed, plans, written, skipped, sync=sync_each, probe=check)
                self._check_quorum(key, plans, failed, first, skipped)
                records.extend(
                    manifest.SegmentRecord(seg.plain, seg.compressed, seg.nonce, seg.sealed, tuple(seg.hashes),
                                           tuple(plan))
                    for seg, plan in zip(sealed, plans, strict=True)
                )
                if progress:
                    progress(sum(s.plain for s in sealed))
            if not sync_each:
                # One sync for the whole object, before the manifest can name it (not one per window).
                for name, error in (await self.pool.flush(self.pool.named(list(written)))).items():
                    failed.add(name)
                    skipped[name] = error.message
                self._check_quorum(key, [r.places for r in records], failed, 0, skipped)
        except BaseException:
            for job in pending:
                await settle(job)
            await self._discard(written)
            raise
        durable = [sum(1 for p in r.places if p != UNPLACED and p not in failed) for r in records]
        stored, fewest = sum(durable), min(durable)
        nonce, sealed_key = self.catalog.seal_key(key, oid)
        record = Manifest(
            oid=oid, version=version, epoch=epoch, created=time.time(), prev=head.digest if head else None,
            signer=self.catalog.node_keys.node_id, size=len(view), k=codec.k, m=codec.m, codec=codec.ec_type,
            zstd=cfg.zstd_level, sealed_key=sealed_key, key_nonce=nonce, segments=tuple(records),
        )
        blob = manifest.sign_manifest(record, self.catalog.node_keys)
        try:
            replicas = await self._commit(oid, version, blob, record)
        except BaseException:
            await self._discard(written)
            raise
        self.catalog.note_commit(oid, key, Head(version, epoch, manifest.digest(blob)))
        expected = codec.n * count
        if stored < expected or replicas < cfg.replicas:
            self.repairs.request(oid, version, spare=fewest - codec.k)
        return WriteReport(
            Version(key, version, len(view), epoch, record.created), stored, expected, skipped, replicas
        )

    def _check_quorum(
        self, key: str, plans: Sequence[Sequence[str]], failed: set[str], first: int, skipped: dict[str, str]
    ) -> None:
        n = self.config.n
        for i, plan in enumerate(plans):
            ok = sum(1 for name in plan if name != UNPLACED and name not in failed)
            if ok < self.config.quorum:
                raise StorageError(
                    f"write of {key} failed: only {ok} of {n} fragments of segment {first + i} were stored "
                    f"(need {self.config.quorum}); " + _skipped_text(skipped)
                )

    async def _store(
        self, sealed: list[pipeline.SealedSegment], plans: list[list[str]], written: dict[str, list[str]],
        skipped: dict[str, str], *, sync: bool, probe: tuple[str, int] | None,
    ) -> set[str]:
        """Write one window's fragments, one batch per backend; the names of backends that failed.

        With `probe` (object id, version), every backend is also asked for that version's
        manifest in the same round; if one holds it, the version is taken (the caller
        discards the fragments). A backend that cannot answer makes us list the object.
        """
        batches: dict[str, list[tuple[str, bytes]]] = {}
        for seg, plan in zip(sealed, plans, strict=True):
            for frag_hash, frag, name in zip(seg.hashes, seg.fragments, plan, strict=True):
                if name != UNPLACED:
                    batches.setdefault(name, []).append((frag_hash, frag))
        names = list(batches)
        probes: list[Job[bytes | None]] = []
        if probe:
            probes = [(b, GetMeta(manifest.manifest_name(*probe))) for b in self.pool.backends]
        puts: list[Job[None]] = [(b, PutFragments(batches[b.name])) for b in self.pool.named(names)]
        results = await self.pool.fanout([*probes, *puts], durable=sync)
        seen, results = results[: len(probes)], results[len(probes) :]
        failed = set()
        for name, result in zip(names, results, strict=True):
            if isinstance(result, StorageError | Conflict):
                failed.add(name)
                skipped[name] = result.message
            else:
                written.setdefault(name, []).extend(h for h, _ in batches[name])
        if any(isinstance(found, bytes) for found in seen):
            raise VersionTaken()
        if probe and any(isinstance(found, StorageError) for found in seen):  # a backend we could not ask
            versions = (await self.catalog.index(probe[0])).versions()
            if versions and versions[-1] >= probe[1]:
                raise VersionTaken()
        return failed

    async def _discard(self, written: dict[str, list[str]]) -> None:
        """Best effort: remove fragments of a put that did not commit (gc sweeps what this misses)."""
        await self.pool.fanout([(b, DeleteFragments(written[b.name])) for b in self.pool.named(list(written))])

    async def _commit(self, oid: str, version: int, blob: bytes, record: Manifest) -> int:
        """Create the manifest put-if-absent on its replica targets; commit needs a majority of them."""
        cfg = self.config
        name = manifest.manifest_name(oid, version)
        usable = {b.name for b in self.pool.writable()}
        targets = replica_targets(self.pool.slots, usable, oid, cfg.replicas)
        results = await self.pool.fanout([(b, PutMeta(name, blob)) for b in self.pool.named(targets)])
        created = [t for t, r in zip(targets, results, strict=True) if r is True or r is False]
        conflicts = [r for r in results if isinstance(r, Conflict)]
        if len(created) >= cfg.manifest_quorum:
            self.catalog.remember(name, MetaRead(manifest.digest(blob), record, blob, created, [], []))
            return len(created)
        await self.pool.fanout([(b, DeleteMeta([name])) for b in self.pool.named(created)])
        if conflicts:
            raise VersionTaken()
        errors = "; ".join(
            f"{t}: {r.message}" for t, r in zip(targets, results, strict=True) if isinstance(r, StorageError)
        )
        raise StorageError(
            f"manifest of version {version} reached {len(created)} of {len(targets)} replicas "
            f"(need {cfg.manifest_quorum}): {errors or 'too few backends'}"
        )


def _skipped_text(skipped: dict[str, str]) -> str:
    return "skipped backends: " + ("; ".join(f"{n}: {e}" for n, e in sorted(skipped.items())) or "none")
