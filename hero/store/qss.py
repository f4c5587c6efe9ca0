"""QSS: the node's state store — erasure-coded, encrypted, versioned, signed and self-healing.

`QSS` is the StateStore seam over the store's parts, and the one place they are
wired together and owned:

- `catalog.py`: which objects and versions exist, what their manifests say, object names;
- `writer.py`: the write path (seal, place, store, commit a signed manifest, fence by epoch);
- `reader.py` and `fetch.py`: the read path (verified fragments, decode, decrypt);
- `scrubber.py` and `repairs.py`: re-hashing every fragment, rebuilding what is lost;
- `gc.py`: dropping old versions and unreferenced fragments, once or on a schedule;
- `pool.py` and `backends/`: the backends and their health; `workers.py`: the thread pools.

What backends see: ciphertext fragments named by their hash, and manifests
under `obj/<object id>/` where the object id is a keyed hash of the store key
and the store key itself is sealed; sizes, times and the writer's node id are
in the clear. `keys()` after a wipe lists those directories and unseals the
key names with the master key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hero.identity import NodeKeys
from hero.nursery import Nursery
from hero.seams.store import Version
from hero.store import config as config_mod
from hero.store import erasure
from hero.store.backends.directory import DirBackend
from hero.store.backends.protocol import Backend
from hero.store.backends.remote import RemoteBackend
from hero.store.base import check_key
from hero.store.catalog import Catalog, ObjectIndex, Resolved, codec_of
from hero.store.config import QSSConfig
from hero.store.gc import ORPHAN_GRACE_S, Collector, PurgeReport, VersionRetention
from hero.store.manifest import Manifest
from hero.store.pool import BackendPool
from hero.store.purges import PendingPurges
from hero.store.reader import Reader
from hero.store.repairs import RepairQueue
from hero.store.scrubber import Scrubber
from hero.store.tuning import tune_malloc
from hero.store.workers import Progress, Workers
from hero.store.writer import Writer, WriteReport


class QSS:
    """The StateStore of a node. Build it with `open_qss`; call `start()` to run the scrubber and retention gc."""

    def __init__(
        self, *, keys: NodeKeys, config: QSSConfig, backends: Sequence[Backend], data_dir: Path, workers: Workers
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.ec_type = erasure.default_type() if config.codec == "auto" else config.codec
        erasure.codec(config.k, config.m, self.ec_type)  # refuse a code the machine cannot run, before any write
        self.workers = workers
        self.pool = BackendPool(backends, workers.io)
        self.catalog = Catalog(self.pool, keys, trusted_signers=config.trusted_signers)
        self.ring = self.catalog.ring
        self.repairs = RepairQueue()
        self.writer = Writer(self.catalog, self.repairs, workers, config=config, ec_type=self.ec_type)
        self.reader = Reader(self.catalog, self.repairs, workers)
        self.collector = Collector(self.catalog)
        self.purges = PendingPurges(self.data_dir / "qss" / "purges.json", self.collector, self.pool)
        self.scrubber = Scrubber(self.catalog, self.repairs, cpu=workers.cpu, config=config,
                                 state_file=self.data_dir / "qss" / "scrub.json", purging=self.purges.covers)
        self.retention = VersionRetention(self.collector, keep=config.keep_versions, interval_s=config.gc_interval_s)
        self._background = Nursery("qss")  # the scrubber's, retention's and pending purges' loops
        self._closed = False

    # Lifecycle

    async def start(self) -> None:
        """Start the background scrubber and retention gc (the node does; one-shot CLI commands need not)."""
        self.scrubber.start(self._background)
        self.retention.start(self._background)
        self.purges.start(self._background)

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
            self.workers.shutdown()

    async def __aenter__(self) -> QSS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # The StateStore seam

    async def put(self, key: str, data: bytes, *, epoch: int, expect: int | None = None) -> Version:
        return (await self.writer.put(key, data, epoch=epoch, expect=expect)).version

    async def put_report(self, key: str, data: bytes, *, epoch: int, progress: Progress | None = None) -> WriteReport:
        """Store the next version of `key`; the report says which backends were skipped."""
        return await self.writer.put(key, data, epoch=epoch, progress=progress)

    async def get(self, key: str, version: int | None = None, *, progress: Progress | None = None) -> bytes:
        return await self.reader.get(key, version, progress=progress)

    async def head(self, key: str) -> Version | None:
        return await self.reader.head(key)

    async def latest(self, key: str) -> tuple[Version, bytes] | None:
        return await self.reader.latest(key)

    async def versions(self, key: str) -> list[Version]:
        return await self.reader.versions(key)

    async def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, but none being purged (what a backend that was down brings back is gone)."""
        keys = await self.catalog.keys(prefix)
        await self.purges.load()
        return [key for key in keys if not self.purges.covers(key)] if self.purges.any() else keys

    # Operations

    async def scrub(self, *, rate_mb_s: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """One full pass now: re-hash every fragment, rebuild what is lost. Unlimited rate unless given."""
        report = await self.scrubber.scrub_pass(rate_mb_s=rate_mb_s, progress=progress)
        return report.to_json()

    async def gc(self, keep: int, *, orphan_grace_s: float | None = ORPHAN_GRACE_S) -> dict[str, Any]:
        """Drop all but the newest `keep` versions of every object, then fragments nothing refers to.

        Unreferenced fragments younger than `orphan_grace_s` stay (a put may not have committed yet);
        None leaves them all.
        """
        return (await self.collector.collect(keep, orphan_grace_s=orphan_grace_s)).to_json()

    async def purge(self, prefix: str) -> PurgeReport:
        """Delete every object whose key starts with `prefix` (ending in '/'): every version, patch and fragment on
        every backend, and the cached data key of that scope. `left` says what a backend that was down still holds;
        that is then `pending`: recorded, and purged there once the backend answers (`purges.py`)."""
        report = await self.collector.purge(prefix)
        await self.purges.settle(report)
        return report

    async def delete(self, key: str) -> PurgeReport:
        """Delete one object: every version, patch and fragment of it on every backend (`pending` as `purge`)."""
        check_key(key)
        report = await self.collector.delete(key)
        await self.purges.settle(report)
        return report

    async def prune(self, key: str, keep: int) -> int:
        """Drop all but the newest `keep` versions of `key` (the runtime's word for an agent's head, whose old
        versions hold nothing); how many went. Other objects keep `keep_versions`."""
        return await self.collector.prune(key, keep)

    async def status(self) -> dict[str, Any]:
        """Backends (location, up/down/full, fragment counts), scrub and repair state: for CLI and dashboard."""
        cfg = self.config
        return {
            "store": "qss",
            "node_id": self.catalog.node_keys.node_id,
            "k": cfg.k, "m": cfg.m, "codec": self.ec_type, "write_quorum": cfg.quorum,
            "manifest_replicas": cfg.replicas, "zstd_level": cfg.zstd_level, "segment_size": cfg.segment_size,
            "fsync": cfg.fsync,
            **(await self.pool.status()),
            **(await self.scrubber.status()),
            "retention": self.retention.status(),
            "purges_pending": await self.purges.status(),
        }

    # Inspection, for tests and tools: where an object's versions and fragments are

    async def index(self, oid: str) -> ObjectIndex:
        return await self.catalog.index(oid)

    async def resolve(self, oid: str, index: ObjectIndex, version: int) -> Resolved:
        return await self.catalog.resolve(oid, index, version)

    def codec_of(self, m: Manifest) -> erasure.Codec:
        return codec_of(m)


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
    workers = Workers.start(cpu_workers=cfg.cpu_workers, io_workers=cfg.io_workers)
    io = workers.io

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
        qss = QSS(keys=keys, config=cfg, backends=backends, data_dir=data_dir, workers=workers)
        await qss.purges.load()  # before any listing: keys under a pending purge are never listed
        return qss
    except BaseException:
        workers.cpu.shutdown(wait=False)
        workers.io.shutdown(wait=False)
        raise
