"""The read path: a version's fragments fetched a window at a time, decoded, decrypted and decompressed.

The fragments of the next window are fetched while the previous window's
segments decode on the CPU workers. A read that met a missing or rotten
fragment still answers (any k of k + m will do) and queues the version for
repair. Errors name the object by its store key, the operator's name for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import Iterator
from functools import partial

from hero.errors import BadRequest, IntegrityError, NotFound, StorageError
from hero.seams.store import Version
from hero.store import pipeline
from hero.store.base import check_key
from hero.store.catalog import Catalog, Resolved, codec_of
from hero.store.fetch import Fetcher
from hero.store.repairs import RepairQueue
from hero.store.workers import WINDOW_BYTES, Progress, Workers, settle


class Reader:
    def __init__(self, catalog: Catalog, repairs: RepairQueue, workers: Workers) -> None:
        self.catalog = catalog
        self.fetcher = Fetcher(catalog.pool)
        self.repairs = repairs
        self.workers = workers

    async def get(self, key: str, version: int | None = None, *, progress: Progress | None = None) -> bytes:
        with about(key):
            check_key(key)
            if version is not None and version < 1:
                raise BadRequest("version must be >= 1", field="version")
            if version is None:
                head = await self.catalog.resolve_head(key)
                if head is None:
                    raise NotFound(f"no object {key!r}")
                return await self.read(key, head, progress)
            oid = self.catalog.ring.object_id(key)
            index = await self.catalog.index(oid)
            versions = index.versions()
            if not versions:
                raise NotFound(f"no object {key!r}")
            if version not in versions:
                raise NotFound(f"no version {version} of {key!r} (versions {versions[0]}..{versions[-1]})")
            resolved = await self.catalog.resolve(oid, index, version)
            if self.catalog.unseal_key(resolved.manifest) != key:
                raise IntegrityError(f"manifest of {key!r} names another key")
            return await self.read(key, resolved, progress)

    async def head(self, key: str) -> Version | None:
        with about(key):
            resolved = await self.catalog.resolve_head(key)
            if resolved is None:
                return None
            m = resolved.manifest
            return Version(key, m.version, m.size, m.epoch, m.created)

    async def latest(self, key: str) -> tuple[Version, bytes] | None:
        with about(key):
            resolved = await self.catalog.resolve_head(key)
            if resolved is None:
                return None
            m = resolved.manifest
            return Version(key, m.version, m.size, m.epoch, m.created), await self.read(key, resolved, None)

    async def versions(self, key: str) -> list[Version]:
        with about(key):
            return await self.catalog.versions(key)

    async def read(self, key: str, resolved: Resolved, progress: Progress | None) -> bytes:
        """Fetch a window of segments' fragments while the previous window decodes.

        Segments are decoded straight into one buffer that `getvalue` hands back without a
        copy: no bytes object per segment and no join of them (5-8 % of a 64 MiB read, one core).
        """
        m = resolved.manifest
        codec = codec_of(m)
        data_key = self.catalog.ring.data_key(key)
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
                fetched = await self.fetcher.fetch(resolved, segs, want_all=False)
                broken = broken or bool(fetched.missing or fetched.corrupt)
                for job in decoding:
                    await job
                decoding = [loop.run_in_executor(self.workers.cpu, open_one, s, fetched.good[s]) for s in segs]
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
                self.repairs.request(m.oid, m.version, spare=0)
        return single if single is not None else assembled.getvalue()


@contextlib.contextmanager
def about(key: str) -> Iterator[None]:
    """A read's storage errors name the object by its store key (the operator's name for it, not its id)."""
    try:
        yield
    except StorageError as exc:
        if key in exc.message:
            raise
        raise type(exc)(f"{key}: {exc.message}") from None
