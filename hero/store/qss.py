"""QSS: the node's state store — erasure-coded, encrypted, versioned, signed and self-healing.

An object version is cut into segments; each segment is compressed, sealed
under its agent's key, Reed–Solomon coded into k + m fragments and spread over
backends (one fragment per backend, balanced over locations). A signed,
hash-chained manifest names every fragment; its replicas live on the backends
themselves, so the node's own disk holds nothing that matters. Versions are
numbered by put-if-absent manifest files: a version commits when a majority of
its replica targets took it, and the head moves only with the current lease
epoch. The scrubber (scrubber.py) re-hashes fragments in the background and
rebuilds what is lost from ciphertext alone.

What backends see: ciphertext fragments named by their hash, and manifests
under `obj/<object id>/` where the object id is a keyed hash of the store key
and the store key itself is sealed; sizes, times and the writer's node id are
in the clear. `keys()` after a wipe lists those directories and unseals the
key names with the master key.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from hero.errors import BadRequest, Conflict, IntegrityError, NotFound, StaleEpoch, StorageError
from hero.identity import NodeKeys
from hero.nursery import Nursery
from hero.store import config as config_mod
from hero.store import crypto, damage, erasure, manifest, pipeline
from hero.store.backends.calls import (
    Call,
    DeleteFragments,
    DeleteMeta,
    GetFragments,
    GetMeta,
    ListFragments,
    ListMeta,
    PutFragments,
    PutMeta,
    Stat,
)
from hero.store.backends.directory import DirBackend
from hero.store.backends.protocol import Backend
from hero.store.backends.remote import RemoteBackend
from hero.store.base import Version, check_key
from hero.store.config import QSSConfig
from hero.store.damage import Identity
from hero.store.manifest import Manifest, Patch
from hero.store.placement import place, replica_targets
from hero.store.pool import BackendPool, Job
from hero.store.retention import Retention
from hero.store.scrubber import Scrubber
from hero.store.tuning import tune_malloc

T = TypeVar("T")
log = logging.getLogger("hero.store")
Progress = Callable[[int], None]
KEY_AD = b"hero-qss-key/1"
WINDOW_BYTES = 8 << 20
INLINE_SEAL_BYTES = 64 << 10  # objects this small are sealed on the event loop (~0.1-0.3 ms), not in a thread
CACHE_ENTRIES = 4096
HEAD_ENTRIES = 16384  # heads this node committed, kept so the next put need not list every version
STATS_TTL = 5.0
UNPLACED = ""  # the place of a fragment no backend could take at write time; the repair queue places it


@dataclass
class ObjectIndex:
    """One listing of an object's directory over all backends: entry name -> backends that hold it."""

    oid: str
    where: dict[str, list[str]] = field(default_factory=dict)
    complete: bool = True
    kinds: dict[str, tuple[int, bool]] = field(default_factory=dict)  # entry -> (version, is_manifest), parsed once

    def add(self, name: str, backend: str) -> None:
        holders = self.where.get(name)
        if holders is None:
            parsed = manifest.parse_name(name)
            if parsed is None:
                return
            self.kinds[name] = parsed
            holders = self.where[name] = []
        holders.append(backend)

    def versions(self) -> list[int]:
        return sorted({version for version, is_manifest in self.kinds.values() if is_manifest})

    def patches(self, version: int) -> list[str]:
        return sorted(n for n, (v, is_manifest) in self.kinds.items() if v == version and not is_manifest)


@dataclass
class MetaRead:
    """The chosen replica of a manifest or patch, and which holders have it, another copy, or nothing."""

    digest: str
    record: Manifest | Patch
    blob: bytes
    good: list[str]
    bad: list[str]
    unreadable: list[str]


@dataclass
class Resolved:
    """A version's manifest with placement patches applied: where each fragment is now."""

    manifest: Manifest
    digest: str
    places: list[list[str]]


@dataclass(frozen=True)
class _Head:
    """What a put needs of the current head: its number, its epoch (the fence) and its digest (the chain)."""

    version: int
    epoch: int
    digest: str

    @classmethod
    def of(cls, resolved: Resolved) -> _Head:
        return cls(resolved.manifest.version, resolved.manifest.epoch, resolved.digest)


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


@dataclass
class Fetched:
    """Verified fragments per (segment, index), and what was found broken on the way."""

    good: dict[int, dict[int, bytes]]
    missing: set[tuple[int, int]] = field(default_factory=set)
    corrupt: set[tuple[int, int]] = field(default_factory=set)
    found_elsewhere: dict[tuple[int, int], str] = field(default_factory=dict)
    bytes: int = 0


class _VersionTaken(Exception):
    """Another writer committed this version number first."""


class QSS:
    """The StateStore of a node. Build it with `open_qss`; call `start()` to run the scrubber."""

    def __init__(
        self, *, keys: NodeKeys, config: QSSConfig, backends: Sequence[Backend], data_dir: Path,
        cpu: ThreadPoolExecutor, io: ThreadPoolExecutor,
    ) -> None:
        self.node_keys = keys
        self.config = config
        self.pool = BackendPool(backends, io)
        self.data_dir = Path(data_dir)
        self.ring = crypto.KeyRing(keys)
        self.trusted = {keys.node_id, *config.trusted_signers}
        self.ec_type = erasure.default_type() if config.codec == "auto" else config.codec
        erasure.codec(config.k, config.m, self.ec_type)
        self._cpu = cpu
        self._io = io
        self._locks: dict[str, asyncio.Lock] = {}
        self._blobs: OrderedDict[str, MetaRead] = OrderedDict()
        self._names: dict[str, str] = {}
        self._heads: OrderedDict[str, _Head] = OrderedDict()  # oid -> the head this node last committed
        self._stats: tuple[float, list[Any]] = (-STATS_TTL, [])
        self.scrubber = Scrubber(self, state_file=self.data_dir / "qss" / "scrub.json")
        self.retention = Retention(self, keep=config.keep_versions, interval=config.gc_interval_s)
        self._background = Nursery("qss")  # the scrubber's and retention's loops
        self._closed = False

    # Lifecycle

    async def start(self) -> None:
        """Start the background scrubber and retention gc (the node does; one-shot CLI commands need not)."""
        self.scrubber.start(self._background)
        self.retention.start(self._background)

    async def aclose(self) -> None:
        """Finish queued repairs, stop the scrubber, release backends and threads."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._background.aclose()
            await self.scrubber.aclose()
        finally:
            await self.pool.aclose()
            self._cpu.shutdown(wait=False, cancel_futures=True)
            self._io.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> QSS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # Helpers

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    async def attempt(self, backend: Backend, call: Call[T]) -> T | StorageError:
        """A backend call whose storage fault is returned, not raised: callers skip and report it."""
        return await self.pool.attempt(backend, call)

    def codec_of(self, m: Manifest) -> erasure.Codec:
        return erasure.codec(m.k, m.m, m.codec)

    def remember(self, name: str, value: MetaRead) -> None:
        self._blobs[name] = value
        self._blobs.move_to_end(name)
        while len(self._blobs) > CACHE_ENTRIES:
            self._blobs.popitem(last=False)

    # Listing and resolving manifests

    async def index(self, oid: str) -> ObjectIndex:
        directory = manifest.object_dir(oid)
        results = await self.pool.fanout([(b, ListMeta(directory)) for b in self.pool.backends])
        index = ObjectIndex(oid)
        for backend, names in zip(self.pool.backends, results, strict=True):
            if not isinstance(names, list):  # the backend's fault, returned as a value
                index.complete = False
                continue
            for name in names:
                index.add(name, backend.name)
        return index

    async def read_meta(
        self, oid: str, entry: str, holders: Sequence[str], *, patch: bool, fresh: bool = False
    ) -> MetaRead:
        """Read every replica of a manifest or patch and pick the valid one most replicas agree on.

        Two different valid replicas of one version exist only if a writer lost a
        race and died before removing its own; the majority copy is the committed one.
        """
        name = f"{manifest.object_dir(oid)}/{entry}"
        if not fresh:
            cached = self._blobs.get(name)
            if cached is not None:
                return cached
        backends = [self.pool.by_name[h] for h in holders if h in self.pool.by_name]
        blobs = await self.pool.fanout([(b, GetMeta(name)) for b in backends])
        valid: dict[str, tuple[Manifest | Patch, bytes, list[str]]] = {}
        bad: list[str] = []
        unreadable: list[str] = []
        errors: dict[str, list[str]] = {}  # what is wrong -> the backends whose replica has it
        for backend, blob in zip(backends, blobs, strict=True):
            if not isinstance(blob, bytes):  # absent, or the backend's fault
                unreadable.append(backend.name)
                continue
            try:
                record = (manifest.open_patch if patch else manifest.open_manifest)(blob, self.trusted, "replica")
            except IntegrityError as exc:
                bad.append(backend.name)
                errors.setdefault(exc.message.removeprefix("replica "), []).append(backend.name)
                continue
            valid.setdefault(manifest.digest(blob), (record, blob, []))[2].append(backend.name)
        if not valid:
            if bad:
                raise IntegrityError(
                    f"no valid replica of {name}: " + "; ".join(f"{e} on {', '.join(b)}" for e, b in errors.items())
                )
            raise StorageError(f"no replica of {name} could be read from {', '.join(unreadable) or 'any backend'}")
        digest, (record, blob, good) = min(valid.items(), key=lambda kv: (-len(kv[1][2]), kv[0]))
        bad.extend(h for d, (_, _, hs) in valid.items() if d != digest for h in hs)
        found = MetaRead(digest, record, blob, good, bad, unreadable)
        self.remember(name, found)
        return found

    async def resolve(self, oid: str, index: ObjectIndex, version: int) -> Resolved:
        entry = manifest.entry_name(version)
        holders = index.where.get(entry)
        if not holders:
            raise NotFound(f"no version {version}")
        found = await self.read_meta(oid, entry, holders, patch=False)
        digest, record = found.digest, found.record
        assert isinstance(record, Manifest)
        if record.oid != oid or record.version != version:
            raise IntegrityError(f"manifest stored as version {version} describes another object or version")
        places = [list(s.places) for s in record.segments]
        patches: list[Patch] = []
        for name in index.patches(version):
            try:
                p = (await self.read_meta(oid, name, index.where[name], patch=True)).record
            except StorageError as exc:
                log.warning("placement patch %s skipped: %s", name, exc.message)
                continue
            assert isinstance(p, Patch)
            if p.manifest == digest and p.oid == oid and p.version == version:
                patches.append(p)
        for p in sorted(patches, key=lambda p: p.created):
            for seg, idx, frag_hash, backend in p.moves:
                if seg < len(places) and idx < record.n and record.segments[seg].hashes[idx] == frag_hash:
                    places[seg][idx] = backend
        return Resolved(record, digest, places)

    def unseal_key(self, m: Manifest) -> str:
        plain = crypto.unseal(
            self.ring.meta, m.key_nonce, m.sealed_key, KEY_AD + bytes.fromhex(m.oid), what=f"object {m.oid[:16]}…"
        )
        return plain.decode()

    async def _head(self, oid: str, index: ObjectIndex) -> Resolved | None:
        versions = index.versions()
        return await self.resolve(oid, index, versions[-1]) if versions else None

    # The StateStore seam

    async def put(self, key: str, data: bytes, *, epoch: int) -> Version:
        return (await self.put_report(key, data, epoch=epoch)).version

    async def put_report(self, key: str, data: bytes, *, epoch: int, progress: Progress | None = None) -> WriteReport:
        """Store the next version of `key`; the report says which backends were skipped."""
        check_key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadRequest("store data must be bytes")
        oid = self.ring.object_id(key)
        lock = self._locks.setdefault(oid, asyncio.Lock())
        async with lock:
            for attempt in range(8):
                # This node's own last commit, checked for newer versions by the write itself (`_write`).
                head = self._heads.get(oid) if attempt == 0 else None
                probe = head is not None
                if head is None:
                    resolved = await self._head(oid, await self.index(oid))
                    head = _Head.of(resolved) if resolved else None
                if head is not None and head.epoch > epoch:
                    raise StaleEpoch(f"write to {key} with epoch {epoch} refused: head has epoch {head.epoch}")
                version = head.version + 1 if head else 1
                try:
                    report = await self._write(key, oid, version, epoch, head, data, progress, probe=probe)
                except _VersionTaken:
                    self._heads.pop(oid, None)
                    log.info("version %d of %s was taken by another writer; retrying", version, key)
                    continue
                return report
            raise Conflict(f"could not commit a version of {key}: other writers keep taking the next number")

    async def _remembered_head(self, oid: str) -> Resolved | None:
        """The head this node committed, resolved without listing the object (see `_known_head`).

        Placement patches written since by this node drop the memory (`forget_head`);
        fragments moved by another process's repair are still found by hash (`fetch`).
        """
        head = await self._known_head(oid)
        if head is None:
            return None
        entry = manifest.entry_name(head.version)
        found = await self.read_meta(oid, entry, [b.name for b in self.pool.backends], patch=False)
        record = found.record
        if found.digest != head.digest or not isinstance(record, Manifest):
            self.forget_head(oid)
            return None
        return Resolved(record, found.digest, [list(s.places) for s in record.segments])

    async def _known_head(self, oid: str) -> _Head | None:
        """The head this node last committed, if no backend holds a newer version.

        Listing every manifest costs time in proportion to the number of versions; a
        node that keeps writing one object (an agent's state, every turn) knows its
        head already. One probe of every backend for the next version's manifest
        (O(1) per backend) catches any other writer; then we list as before.
        """
        head = self._heads.get(oid)
        if head is None:
            return None
        name = manifest.manifest_name(oid, head.version + 1)
        found = await self.pool.fanout([(b, GetMeta(name)) for b in self.pool.backends])
        if any(blob is not None for blob in found):  # a newer version, or a backend we could not ask
            self._heads.pop(oid, None)
            return None
        return head

    async def _write(
        self, key: str, oid: str, version: int, epoch: int, head: _Head | None, data: bytes,
        progress: Progress | None, *, probe: bool = False,
    ) -> WriteReport:
        """Seal, store and commit one version.

        With `probe`, `head` is only what this node last committed: the first window's
        fragment writes also ask every backend for a manifest of `version`, in the same
        round trip, and a hit means another writer got there first (`_VersionTaken`).
        A one-window object is made durable in that same round; larger ones sync once
        at the end. Small segments are sealed on the loop: cheaper than a thread hop.
        """
        cfg = self.config
        codec = erasure.codec(cfg.k, cfg.m, self.ec_type)
        view = memoryview(data).cast("B")
        seg_size = cfg.segment_size
        count = max(1, math.ceil(len(view) / seg_size))
        per_window = max(1, WINDOW_BYTES // seg_size)
        data_key = self.ring.data_key(key)
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
                        pending.append(loop.run_in_executor(self._cpu, seal, submitted))
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
        nonce, sealed_key = crypto.seal(self.ring.meta, key.encode(), KEY_AD + bytes.fromhex(oid))
        record = Manifest(
            oid=oid, version=version, epoch=epoch, created=time.time(), prev=head.digest if head else None,
            signer=self.node_keys.node_id, size=len(view), k=codec.k, m=codec.m, codec=codec.ec_type,
            zstd=cfg.zstd_level, sealed_key=sealed_key, key_nonce=nonce, segments=tuple(records),
        )
        blob = manifest.sign_manifest(record, self.node_keys)
        try:
            replicas = await self._commit(oid, version, blob, record)
        except BaseException:
            await self._discard(written)
            raise
        self._names[oid] = key
        self._heads[oid] = _Head(version, epoch, manifest.digest(blob))
        self._heads.move_to_end(oid)
        while len(self._heads) > HEAD_ENTRIES:
            self._heads.popitem(last=False)
        expected = codec.n * count
        if stored < expected or replicas < cfg.replicas:
            self.scrubber.request(oid, version, spare=fewest - codec.k)
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
            raise _VersionTaken()
        if probe and any(isinstance(found, StorageError) for found in seen):  # a backend we could not ask
            versions = (await self.index(probe[0])).versions()
            if versions and versions[-1] >= probe[1]:
                raise _VersionTaken()
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
            self.remember(name, MetaRead(manifest.digest(blob), record, blob, created, [], []))
            return len(created)
        await self.pool.fanout([(b, DeleteMeta([name])) for b in self.pool.named(created)])
        if conflicts:
            raise _VersionTaken()
        errors = "; ".join(
            f"{t}: {r.message}" for t, r in zip(targets, results, strict=True) if isinstance(r, StorageError)
        )
        raise StorageError(
            f"manifest of version {version} reached {len(created)} of {len(targets)} replicas "
            f"(need {cfg.manifest_quorum}): {errors or 'too few backends'}"
        )

    async def get(self, key: str, version: int | None = None, *, progress: Progress | None = None) -> bytes:
        with _about(key):
            check_key(key)
            if version is not None and version < 1:
                raise BadRequest("version must be >= 1", field="version")
            if version is None:
                head = await self._resolve_head(key)
                if head is None:
                    raise NotFound(f"no object {key!r}")
                return await self._read(key, head, progress)
            oid = self.ring.object_id(key)
            index = await self.index(oid)
            versions = index.versions()
            if not versions:
                raise NotFound(f"no object {key!r}")
            if version not in versions:
                raise NotFound(f"no version {version} of {key!r} (versions {versions[0]}..{versions[-1]})")
            resolved = await self.resolve(oid, index, version)
            if self.unseal_key(resolved.manifest) != key:
                raise IntegrityError(f"manifest of {key!r} names another key")
            return await self._read(key, resolved, progress)

    def forget_head(self, oid: str) -> None:
        self._heads.pop(oid, None)

    async def _resolve_head(self, key: str) -> Resolved | None:
        check_key(key)
        oid = self.ring.object_id(key)
        resolved = await self._remembered_head(oid)
        if resolved is None:
            resolved = await self._head(oid, await self.index(oid))
        if resolved is not None and self.unseal_key(resolved.manifest) != key:
            raise IntegrityError(f"manifest of {key!r} names another key")
        return resolved

    async def head(self, key: str) -> Version | None:
        with _about(key):
            resolved = await self._resolve_head(key)
            if resolved is None:
                return None
            m = resolved.manifest
            return Version(key, m.version, m.size, m.epoch, m.created)

    async def latest(self, key: str) -> tuple[Version, bytes] | None:
        with _about(key):
            resolved = await self._resolve_head(key)
            if resolved is None:
                return None
            m = resolved.manifest
            return Version(key, m.version, m.size, m.epoch, m.created), await self._read(key, resolved, None)

    async def _read(self, key: str, resolved: Resolved, progress: Progress | None) -> bytes:
        """Fetch a window of segments' fragments while the previous window decodes.

        Segments are decoded straight into one buffer that `getvalue` hands back without a
        copy: no bytes object per segment and no join of them (5-8 % of a 64 MiB read, one core).
        """
        m = resolved.manifest
        codec = self.codec_of(m)
        data_key = self.ring.data_key(key)
        count = len(m.segments)
        per_window = max(1, WINDOW_BYTES // max(1, max(s.plain for s in m.segments)))
        windows = [list(range(i, min(count, i + per_window))) for i in range(0, count, per_window)]
        offsets = list(itertools.accumulate((s.plain for s in m.segments), initial=0))
        assembled = io.BytesIO()
        if count > 1 and offsets[-1]:
            assembled.seek(offsets[-1] - 1)
            assembled.write(b"\0")  # sizes the buffer once; the segments overwrite every byte
        view = assembled.getbuffer()
        broken = False

        def open_one(s: int, fragments: dict[int, bytes]) -> bytes | None:
            seg = m.segments[s]
            opener = pipeline.open_segment if count == 1 else partial(
                pipeline.open_segment_into, view[offsets[s] : offsets[s + 1]]
            )
            return opener(
                fragments, key=data_key, oid=m.oid, version=m.version, index=s, count=count, codec=codec,
                nonce=seg.nonce, compressed=seg.compressed, plain=seg.plain, sealed=seg.sealed,
            )

        loop = asyncio.get_running_loop()
        decoding: list[asyncio.Future[bytes | None]] = []  # one job per segment: every CPU worker decodes
        single: bytes | None = None
        try:
            for segs in windows:
                fetched = await self.fetch(resolved, segs, want_all=False)
                broken = broken or bool(fetched.missing or fetched.corrupt)
                for job in decoding:
                    await job
                decoding = [loop.run_in_executor(self._cpu, open_one, s, fetched.good[s]) for s in segs]
                if progress:
                    progress(sum(m.segments[s].plain for s in segs))
            for job in decoding:
                single = await job
            decoding = []
        finally:
            for job in decoding:
                await settle(job)
            view.release()
            if broken:
                self.scrubber.request(m.oid, m.version, spare=0)
        return single if single is not None else assembled.getvalue()

    async def fetch(self, resolved: Resolved, segs: Sequence[int], *, want_all: bool) -> Fetched:
        """Verified fragments of `segs`: k each (data first) for reads, all of them for scrubbing.

        A fragment absent or rotten at its recorded place is noted, and its hash
        is looked for on every other backend (a lost placement patch, a rebuilt
        copy). Reads skip backends in back-off unless the others fall short.
        """
        m = resolved.manifest
        fetched = Fetched(good={s: {} for s in segs})
        tried: set[tuple[int, int, str]] = set()

        def at_place(s: int, indices: Sequence[int]) -> list[tuple[int, int, str]]:
            return [(s, i, resolved.places[s][i]) for i in indices if (s, i, resolved.places[s][i]) not in tried]

        if want_all:
            first = [w for s in segs for w in at_place(s, range(m.n))]
        else:
            def up_first(s: int) -> list[int]:
                return sorted(range(m.n), key=lambda i: (not self.pool.is_up(resolved.places[s][i]), i))

            order = {s: up_first(s) for s in segs}
            first = [w for s in segs for w in at_place(s, order[s][: m.k])]
        await self._fetch_round(resolved, first, fetched, tried, skip_down=True)
        short = [s for s in segs if len(fetched.good[s]) < m.k]
        if short and not want_all:
            await self._fetch_round(
                resolved, [w for s in short for w in at_place(s, range(m.n))], fetched, tried, skip_down=False
            )
        search = [(s, i) for s in segs for i in range(m.n) if i not in fetched.good[s]
                  and (want_all or len(fetched.good[s]) < m.k)]
        if search:
            elsewhere = [(s, i, b.name) for s, i in search for b in self.pool.backends if (s, i, b.name) not in tried]
            await self._fetch_round(resolved, elsewhere, fetched, tried, skip_down=want_all)
        fetched.missing -= {(s, i) for s in segs for i in fetched.good[s] if (s, i) not in fetched.found_elsewhere}
        if not want_all:
            for s in segs:
                if len(fetched.good[s]) < m.k:
                    raise IntegrityError(
                        f"version {m.version}, segment {s}: only {len(fetched.good[s])} of the {m.k} fragments "
                        f"needed could be read and verified ({len(fetched.missing)} missing, "
                        f"{len(fetched.corrupt)} corrupt)"
                    )
        return fetched

    async def _fetch_round(
        self, resolved: Resolved, wanted: list[tuple[int, int, str]], fetched: Fetched,
        tried: set[tuple[int, int, str]], *, skip_down: bool,
    ) -> None:
        m = resolved.manifest
        batches: dict[str, list[tuple[int, int]]] = {}
        writable = {b.name for b in self.pool.writable()} if skip_down else set()
        for s, i, name in wanted:
            if i in fetched.good[s]:
                continue
            at_place = name == resolved.places[s][i]
            if name not in self.pool.by_name or (skip_down and not self.pool.is_up(name) and name not in writable):
                if at_place:
                    fetched.missing.add((s, i))
                continue
            tried.add((s, i, name))
            batches.setdefault(name, []).append((s, i))

        names = list(batches)
        results = await self.pool.fanout(
            [(b, GetFragments([m.segments[s].hashes[i] for s, i in batches[b.name]])) for b in self.pool.named(names)],
            post=_hashed,
        )
        for name, result in zip(names, results, strict=True):
            found = [(None, None)] * len(batches[name]) if isinstance(result, Exception) else result
            for (s, i), (blob, got) in zip(batches[name], found, strict=True):
                at_place = name == resolved.places[s][i]
                if blob is None:
                    if at_place:
                        fetched.missing.add((s, i))
                    continue
                fetched.bytes += len(blob)
                if got != m.segments[s].hashes[i]:
                    if at_place:
                        fetched.corrupt.add((s, i))
                elif i not in fetched.good[s]:
                    fetched.good[s][i] = blob
                    if not at_place:
                        fetched.found_elsewhere[(s, i)] = name

    async def versions(self, key: str) -> list[Version]:
        with _about(key):
            check_key(key)
            oid = self.ring.object_id(key)
            index = await self.index(oid)
            out: list[Version] = []
            previous: Resolved | None = None
            for number in index.versions():
                resolved = await self.resolve(oid, index, number)
                m = resolved.manifest
                if previous is not None and previous.manifest.version == number - 1 and m.prev != previous.digest:
                    raise IntegrityError(
                        f"hash chain of {key!r} is broken: version {number} does not follow version {number - 1}"
                    )
                out.append(Version(key, number, m.size, m.epoch, m.created))
                previous = resolved
            return out

    async def oids(self) -> tuple[set[str], dict[str, list[str]], bool]:
        """Every object id on any backend, which backends hold it, and whether every backend answered."""
        results = await self.pool.fanout([(b, ListMeta(manifest.OBJECTS)) for b in self.pool.backends])
        holders: dict[str, list[str]] = {}
        complete = True
        for backend, names in zip(self.pool.backends, results, strict=True):
            if not isinstance(names, list):
                complete = False
                continue
            for name in names:
                if pipeline.HEX64.match(name):
                    holders.setdefault(name, []).append(backend.name)
        return set(holders), holders, complete

    def known_name(self, oid: str) -> str | None:
        """The store key of an object this process has written or identified, without asking any backend."""
        return self._names.get(oid)

    async def name_of(self, oid: str, holders: Sequence[str]) -> str | None:
        """The store key of an object of ours (None for another node's object, an empty or a damaged one)."""
        found = await self.identify(oid, holders)
        return found.key if found.kind == "ours" else None

    async def identify(self, oid: str, holders: Sequence[str]) -> Identity:
        """Whose object this is and its store key; one whose every manifest replica fails is `damaged`."""
        known = self._names.get(oid)
        if known is not None:
            return Identity("ours", known)
        directory = manifest.object_dir(oid)
        errors: list[str] = []
        recovered: str | None = None
        seen = False
        for holder in self.pool.readable_first(holders):
            backend = self.pool.by_name[holder]
            entries = await self.attempt(backend, ListMeta(directory))
            if isinstance(entries, StorageError):
                continue
            for entry in sorted(e for e in entries if (p := manifest.parse_name(e)) and p[1]):
                seen = True
                blob = await self.attempt(backend, GetMeta(f"{directory}/{entry}"))
                if isinstance(blob, StorageError) or blob is None:
                    continue
                try:
                    record = manifest.open_manifest(blob, None, entry)
                    if record.signer not in self.trusted:  # another node's, if it verifies as theirs; else rot
                        manifest.open_manifest(blob, {record.signer}, entry)
                        return Identity("foreign")
                    record = manifest.open_manifest(blob, self.trusted, entry)
                except IntegrityError as exc:
                    errors.append(f"{holder}: {exc.message}")
                    recovered = recovered or self._recover_name(oid, blob)
                    continue
                name = self.unseal_key(record)
                if self.ring.object_id(name) != oid:
                    raise IntegrityError(f"object {oid[:16]}… names a key that does not hash to it")
                self._names[oid] = name
                return Identity("ours", name)
        if not seen:
            return Identity("empty")
        reason = "; ".join(errors[:3]) if errors else "no manifest replica could be read from its backends"
        return Identity("damaged", recovered, f"no valid replica of any manifest: {reason}")

    def _recover_name(self, oid: str, blob: bytes) -> str | None:
        """The store key sealed in a damaged manifest replica, if its sealed fields survived (authenticated)."""
        fields = damage.sealed_key_fields(blob)
        if fields is None:
            return None
        try:
            name = crypto.unseal(self.ring.meta, *fields, KEY_AD + bytes.fromhex(oid), what="key").decode()
        except (IntegrityError, UnicodeDecodeError):
            return None
        return name if self.ring.object_id(name) == oid else None

    async def keys(self, prefix: str = "") -> list[str]:
        oids, holders, _ = await self.oids()
        found = []
        for oid in sorted(oids):
            name = await self.name_of(oid, holders[oid])
            if name is not None and name.startswith(prefix):
                found.append(name)
        return sorted(found)

    # Operations

    async def scrub(self, *, rate_mb_s: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """One full pass now: re-hash every fragment, rebuild what is lost. Unlimited rate unless given."""
        report = await self.scrubber.scrub_pass(rate_mb_s=rate_mb_s, progress=progress)
        return report.to_json()

    async def gc(self, keep: int, *, orphan_grace: float | None = 3600.0) -> dict[str, Any]:
        """Drop all but the newest `keep` versions of every object, then fragments nothing refers to."""
        if keep < 1:
            raise BadRequest("gc must keep at least 1 version", field="keep")
        oids, holders, complete = await self.oids()
        report: dict[str, Any] = {"objects": 0, "versions_removed": 0, "fragments_removed": 0, "meta_removed": 0,
                                  "orphans_removed": 0, "orphan_sweep": "skipped"}
        referenced: set[str] = set()
        sweep_ok = complete
        for oid in sorted(oids):
            if await self.name_of(oid, holders[oid]) is None:
                sweep_ok = sweep_ok and await self._collect_refs(oid, referenced)
                continue
            report["objects"] += 1
            index = await self.index(oid)
            sweep_ok = sweep_ok and index.complete
            numbers = index.versions()
            for number in numbers[: max(0, len(numbers) - keep)]:
                await self._drop_version(oid, index, number, report)
            sweep_ok = sweep_ok and await self._collect_refs(oid, referenced)
        if orphan_grace is not None and sweep_ok:
            report["orphans_removed"] = await self._sweep_orphans(referenced, orphan_grace)
            report["orphan_sweep"] = "done"
        elif orphan_grace is not None:
            report["orphan_sweep"] = "skipped: some backend did not answer, so unreferenced fragments are kept"
        return report

    async def _drop_version(self, oid: str, index: ObjectIndex, number: int, report: dict[str, Any]) -> None:
        try:
            resolved = await self.resolve(oid, index, number)
        except StorageError as exc:
            log.warning("gc: version %d of %s unreadable (%s); its fragments go with the orphan sweep",
                        number, oid[:16], exc.message)
            resolved = None
        entries = [manifest.entry_name(number), *index.patches(number)]
        for entry in entries:
            name = f"{manifest.object_dir(oid)}/{entry}"
            for holder in index.where.get(entry, []):
                removed = await self.attempt(self.pool.by_name[holder], DeleteMeta([name]))
                if isinstance(removed, int):
                    report["meta_removed"] += removed
            index.where.pop(entry, None)
            index.kinds.pop(entry, None)
            self._blobs.pop(name, None)
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
                removed = await self.attempt(backend, DeleteFragments(sorted(hashes)))
                if isinstance(removed, int):
                    report["fragments_removed"] += removed
        report["versions_removed"] += 1

    async def _collect_refs(self, oid: str, referenced: set[str]) -> bool:
        """Add every fragment hash named by this object's manifests and patches (any signer); False if unsure."""
        index = await self.index(oid)
        ok = index.complete
        directory = manifest.object_dir(oid)
        for entry, holders in index.where.items():
            blob = None
            for holder in self.pool.readable_first(holders):
                backend = self.pool.by_name[holder]
                got = await self.attempt(backend, GetMeta(f"{directory}/{entry}"))
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

    async def _sweep_orphans(self, referenced: set[str], grace: float) -> int:
        cutoff = time.time() - grace
        removed = 0
        for backend in self.pool.backends:
            found = await self.attempt(backend, ListFragments())
            if isinstance(found, StorageError):
                continue
            orphans = [f.digest for f in found if f.digest not in referenced and f.mtime < cutoff]
            if orphans:
                count = await self.attempt(backend, DeleteFragments(orphans))
                if isinstance(count, int):
                    removed += count
        return removed

    async def status(self) -> dict[str, Any]:
        """Backends (location, up/down/full, fragment counts), scrub and repair state: for CLI and dashboard."""
        cfg = self.config
        now = time.monotonic()
        if now - self._stats[0] > STATS_TTL:  # counting fragments walks every backend: not on each dashboard poll
            self._stats = (now, await self.pool.fanout([(b, Stat()) for b in self.pool.backends]))
        stats = self._stats[1]
        backends = []
        for backend, stat in zip(self.pool.backends, stats, strict=True):
            entry: dict[str, Any] = {
                "name": backend.name, "location": backend.location, "kind": backend.kind, "address": backend.address,
                **self.pool.health[backend.name].to_json(),
            }
            if isinstance(stat, StorageError):
                entry.update(fragments=None, bytes=None, free_bytes=None)
            else:
                entry.update(fragments=stat.fragments, bytes=stat.bytes, free_bytes=stat.free_bytes)
            backends.append(entry)
        locations: dict[str, dict[str, int]] = {}
        for entry in backends:
            loc = locations.setdefault(entry["location"], {"backends": 0, "up": 0})
            loc["backends"] += 1
            loc["up"] += entry["state"] == "up"
        return {
            "store": "qss",
            "node_id": self.node_keys.node_id,
            "k": cfg.k, "m": cfg.m, "codec": self.ec_type, "write_quorum": cfg.quorum,
            "manifest_replicas": cfg.replicas, "zstd_level": cfg.zstd_level, "segment_size": cfg.segment_size,
            "fsync": cfg.fsync,
            "backends": backends,
            "up": sum(1 for b in backends if b["state"] == "up"),
            "locations": locations,
            **(await self.scrubber.status()),
            "retention": self.retention.status(),
        }


@contextlib.contextmanager
def _about(key: str) -> Iterator[None]:
    """A read's storage errors name the object by its store key (the operator's name for it, not its id)."""
    try:
        yield
    except StorageError as exc:
        if key in exc.message:
            raise
        raise type(exc)(f"{key}: {exc.message}") from None


def _skipped_text(skipped: dict[str, str]) -> str:
    return "skipped backends: " + ("; ".join(f"{n}: {e}" for n, e in sorted(skipped.items())) or "none")


def _hashed(blobs: list[bytes | None]) -> list[tuple[bytes | None, str | None]]:
    """Fetched fragments with their BLAKE3 hashes, computed in the worker that read them."""
    return [(b, None if b is None else pipeline.fragment_hash(b)) for b in blobs]


async def settle(future: asyncio.Future[Any] | None) -> None:
    """Cancel an executor job we no longer need and wait for it, so none outlives its owner unobserved."""
    if future is None:
        return
    future.cancel()
    with contextlib.suppress(BaseException):
        await future


async def open_qss(
    data_dir: Path, keys: NodeKeys, *, k: int | None = None, m: int | None = None, **overrides: Any
) -> QSS:
    """The node's QSS: 20 directory backends under DATA/backends/NN by default, plus any in DATA/storage.toml.

    `k`, `m` and any QSSConfig field given here override the file (defaults k=16, m=4).
    The scrubber starts with `await qss.start()`.
    """
    data_dir = Path(data_dir)
    cfg = config_mod.load(data_dir, k=k, m=m, **overrides)
    if cfg.tune_malloc:
        tune_malloc()
    cpu = ThreadPoolExecutor(cfg.cpu_workers, thread_name_prefix="qss-cpu")
    io = ThreadPoolExecutor(cfg.io_workers, thread_name_prefix="qss-io")

    def build() -> list[Backend]:
        out: list[Backend] = [
            DirBackend(data_dir / "backends" / f"{i:02d}", name=f"local-{i:02d}", location=cfg.local_location,
                       executor=io, fsync=cfg.fsync, verify=False)
            for i in range(cfg.local_backends)
        ]
        for spec in cfg.backends:
            if spec.url is not None:
                out.append(RemoteBackend(spec.url, name=spec.name, location=spec.location, keys=keys, executor=io))
            else:
                assert spec.path is not None
                out.append(DirBackend(spec.path, name=spec.name, location=spec.location, executor=io, fsync=cfg.fsync,
                                      verify=False))
        return out

    try:
        backends = await asyncio.get_running_loop().run_in_executor(io, build)
        return QSS(keys=keys, config=cfg, backends=backends, data_dir=data_dir, cpu=cpu, io=io)
    except BaseException:
        cpu.shutdown(wait=False)
        io.shutdown(wait=False)
        raise
