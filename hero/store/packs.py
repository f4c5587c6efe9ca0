"""Fragments in append-only pack files, 0-db style: one append per put instead of a file per fragment.

A file per fragment costs an inode, a directory entry and a journal record for
every one of the 20 fragments of every put, and a 4 KiB block for a 1.3 KiB
fragment. Here each process appends to a pack file of its own
(`<stem>.pack`: records of header + bytes) and to its index (`<stem>.idx`:
digest, offset, size and a checksum per record; the formats are in
`packformat.py`). The pack is the truth and describes itself; the index only
saves reading it, and is checked, not trusted: an index that fails its checksum
or names bytes the pack does not hold is set aside and its pack walked instead
(then written again, once its writer is gone), and every read checks the record
header it lands on. A record whose index entry was lost in a crash is found by
walking the pack past the last indexed record; a torn record at the end is
ignored.

Deleting a record appends (digest, offset) to `<stem>.del` of the pack holding
it, whichever process deletes, so a deletion names exactly one copy and lives
and dies with the bytes it kills; a repair (`replace`) kills the old copy the
same way, so every process agrees on which copy is current. The killed
record's magic is overwritten too and its bytes zeroed (only if the header there is that record's),
and every read checks the header, so a process with a stale index reads a
deleted record as missing at once. Other processes' packs are read again on a
miss, so a CLI or a fragment server sharing the directory sees what the node wrote.

A writer holds an exclusive `flock` on its pack for as long as it appends to
it. When gc deletes, packs whose lock can be taken (their writer is gone) and
that are at least half dead, or small, are rewritten into the live pack and
removed, so space comes back and the number of packs stays small. The copies
are made durable (fsync of the pack, its index and the directory) before any
source file is removed, so a crash or power cut at any step loses nothing: at
worst a record is held twice until the next compaction.

Just over 400 lines on purpose: append, kill and compaction share one pack's writer, lock and index.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from hero.files import fsync_dir
from hero.store.packformat import DEAD, ENTRY, HEADER, INDEX_MAGIC, INDEX_START, KILL, MAGIC, index_entries
from hero.store.packindex import MASK40, SIDE_FILES, Location, PackBooks, PackIndex
from hero.store.pipeline import fragment_hash

__all__ = ["DEAD", "HEADER", "MAGIC", "MAX_READERS", "Location", "PackFiles"]

log = logging.getLogger("hero.store")
PACK_BYTES = 256 << 20  # roll over to a new pack past this size
IOV_MAX = 1024  # buffers per writev on Linux
COMPACT_DEAD = 0.5  # rewrite a pack once this share of its bytes is dead,
SMALL_PACK = 8 << 20  # or when it is this small (a short-lived process's pack): merged into the live one
COPY_BYTES = 32 << 20  # compaction copies at most this much per append
MAX_READERS = 16  # open read descriptors kept per directory (20 local backends: ~360 descriptors at most)


class PackFiles:
    """The packs of one directory. Thread-safe; the writer's pack is this process's alone."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.fsync = fsync  # compaction makes its copies durable before it removes their source
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._index = PackIndex(self.dir)
        self._readers: OrderedDict[str, int] = OrderedDict()
        self._path = ""  # our pack (its stem is `self._index.own`), its inode, descriptors and sizes
        self._ino = 0
        self._fd = -1
        self._idx_fd = -1
        self._size = 0
        self._idx_size = 0
        self._idx_state = INDEX_START
        with self._lock:
            self._refresh()

    # Reading

    def locate(self, digest: str) -> Location | None:
        """Where a fragment's bytes are, refreshing from other processes' packs on a miss."""
        with self._lock:
            found = self._index.get(digest)
            if found is None:
                self._refresh()
                found = self._index.found(digest)
            return found

    def read(self, digests: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            if any(bytes.fromhex(d) not in self._index.where for d in digests):
                self._refresh()
            for digest in digests:
                out.append(self._read_one(digest))
        return out

    def _read_one(self, digest: str) -> bytes | None:
        """A record's bytes, if the header where the index points is that record's.

        If it is not: another process may have killed or moved it (read what changed), else the
        index was wrong (walk the pack: it is the truth). Still not there: the entry is dropped.
        """
        where = self._index.found(digest)
        for attempt in range(3):
            if where is None:
                return None
            fd = self._reader(where.stem)
            if fd >= 0 and self._intact(fd, where, digest):
                return os.pread(fd, where.size, where.data_offset)
            if attempt == 0:
                self._refresh()
            elif attempt == 1:
                self._index.distrust(where.stem)
            else:
                self._index.drop(digest)
                return None
            where = self._index.found(digest)
        return None

    @staticmethod
    def _intact(fd: int, where: Location, digest: str) -> bool:
        raw = os.pread(fd, HEADER.size, where.offset)
        if len(raw) < HEADER.size:
            return False
        magic, size, stored = HEADER.unpack(raw)
        return magic == MAGIC and size == where.size and stored.hex() == digest

    def _reader(self, stem: str) -> int:
        fd = self._readers.get(stem)
        if fd is None:
            try:
                fd = os.open(self.dir / f"{stem}.pack", os.O_RDONLY)
            except FileNotFoundError:
                return -1
            self._readers[stem] = fd
            if len(self._readers) > MAX_READERS:
                os.close(self._readers.popitem(last=False)[1])
        else:
            self._readers.move_to_end(stem)
        return fd

    def totals(self) -> tuple[int, int]:
        """(fragments, bytes) held, for status: without building a record per fragment."""
        with self._lock:
            self._refresh()
            return len(self._index.where), sum(loc & MASK40 for loc in self._index.where.values())

    def entries(self) -> list[tuple[str, int, float]]:
        """(digest, size, mtime of its pack) of every live fragment."""
        with self._lock:
            self._refresh()
            return [(d, w.size, self._index.packs[w.stem].mtime) for d, w in self._index.all()]

    # Writing

    def append(self, items: Sequence[tuple[str, bytes]], *, replace: bool = False) -> None:
        """Append fragments (one write to the pack, one to its index); known ones are skipped unless `replace`."""
        with self._lock:
            self._append(items, replace)

    def _append(self, items: Sequence[tuple[str, bytes]], replace: bool, *, kill: bool = True) -> None:
        """The hot path of every put, once per backend: raw keys and location ints, no objects per record."""
        where = self._index.where
        fresh: dict[bytes, bytes] = {}
        for digest, data in items:
            raw = bytes.fromhex(digest)
            if replace or raw not in where:
                fresh[raw] = data
        if not fresh:
            return
        self._writable()
        assert self._index.own is not None
        start = offset = self._size
        records: list[bytes] = []
        rows: list[tuple[bytes, int, int]] = []
        for raw, data in fresh.items():
            records += (HEADER.pack(MAGIC, len(data), raw), data)
            rows.append((raw, offset, len(data)))
            offset += HEADER.size + len(data)
        entries, state = index_entries(rows, self._idx_state)
        try:
            _write_all(self._fd, records)
            _write_all(self._idx_fd, entries)
        except OSError:
            self._abandon(start)
            raise
        self._size = offset
        self._idx_size += len(entries) * ENTRY.size
        self._idx_state = state
        replaced = {raw.hex(): self._index.decode(where[raw]) for raw in fresh if raw in where} if kill else {}
        if replaced:
            self._kill(replaced)
        sid = self._index.sid(self._index.own)
        for raw, offset, size in rows:
            old = where.get(raw)
            if old is not None:
                self._index.mark_dead(old)
            where[raw] = sid << 80 | offset << 40 | size
        pack = self._index.packs[self._index.own]
        pack.scanned = pack.total = pack.index_end = self._size
        pack.indexed = self._idx_size
        pack.mtime = time.time()

    def delete(self, digests: Sequence[str]) -> int:
        """Forget fragments (listed in the `.del` of each one's pack); packs left mostly dead are compacted."""
        with self._lock:
            self._refresh()
            gone = {d: w for d in dict.fromkeys(digests) if (w := self._index.get(d)) is not None}
            self._kill(gone)
            for digest in gone:
                self._index.drop(digest)
            self._compact()
            return len(gone)

    def _kill(self, records: dict[str, Location]) -> None:
        """List each record in its pack's deletion list, then mark its header dead and zero its bytes (if it is that
        record's): deleted data does not wait for a compaction to leave the disk."""
        by_stem: dict[str, list[tuple[bytes, Location]]] = {}
        for digest, where in records.items():
            raw = bytes.fromhex(digest)
            by_stem.setdefault(where.stem, []).append((raw, where))
            if where.stem in self._index.packs:
                self._index.packs[where.stem].killed.add((where.offset, raw))
        for stem, kills in by_stem.items():
            try:
                fd = os.open(self.dir / f"{stem}.pack", os.O_RDWR)
            except FileNotFoundError:
                continue  # compacted away: the record went with it
            try:
                dels = os.open(self.dir / f"{stem}.del", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    _write_all(dels, [KILL.pack(raw, where.offset) for raw, where in kills])
                finally:
                    os.close(dels)
                for raw, where in kills:
                    if os.pread(fd, HEADER.size, where.offset) == HEADER.pack(MAGIC, where.size, raw):
                        os.pwrite(fd, shredded(where.size), where.offset)
            finally:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._idx_fd, *self._readers.values()):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._idx_fd = -1
            self._readers.clear()
            self._index.own = None

    def _writable(self) -> None:
        """Make sure this process has an open pack under its name (a new one after a roll-over or a wipe)."""
        if self._index.own is not None:
            if self._size < PACK_BYTES and self._still_ours():
                return
            if self.fsync and self._still_ours():  # a compaction's copies may be in it: durable before we let go
                os.fsync(self._fd)
                os.fsync(self._idx_fd)
            os.close(self._fd)
            os.close(self._idx_fd)
            self._index.own = None
        stem = f"{time.time_ns():016x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        fd = os.open(self.dir / f"{stem}.pack", flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live: nobody compacts it away
            idx = os.open(self.dir / f"{stem}.idx", flags, 0o644)
        except OSError:
            os.close(fd)
            raise
        try:
            _write_all(idx, [INDEX_MAGIC])
        except OSError:
            os.close(fd)
            os.close(idx)
            raise
        self._index.own, self._fd, self._idx_fd, self._size = stem, fd, idx, 0
        self._idx_size, self._idx_state = len(INDEX_MAGIC), INDEX_START
        self._path = str(self.dir / f"{stem}.pack")
        self._ino = os.fstat(fd).st_ino
        self._index.packs[stem] = PackBooks(mtime=time.time(), indexed=self._idx_size)

    def _still_ours(self) -> bool:
        """False once our pack file is gone or another file took its name (a wiped directory)."""
        try:
            return os.stat(self._path).st_ino == self._ino
        except FileNotFoundError:
            return False

    def _abandon(self, size: int) -> None:
        """After a failed append: cut the pack and its index back, or leave them for a new pack if even that fails."""
        try:
            os.ftruncate(self._fd, size)
            os.ftruncate(self._idx_fd, self._idx_size)
        except OSError:
            os.close(self._fd)
            os.close(self._idx_fd)
            self._index.own = None

    def _refresh(self) -> None:
        for stem in self._index.refresh():  # packs gone: compacted by another process, or wiped
            fd = self._readers.pop(stem, None)
            if fd is not None:
                os.close(fd)

    # Space

    def _compact(self) -> None:
        """Rewrite the live records of mostly dead or small packs into ours, then remove those packs.

        Only packs whose writer is gone: its lock must be free. A small pack is merged only
        if there is another small one, so one process's own last pack is left alone. The order
        is what makes it crash-safe: copy, make the copies durable, and only then remove sources.
        """
        own = self._index.own
        small = [s for s, p in self._index.packs.items() if s != own and p.total < SMALL_PACK]
        wanted = [
            stem for stem, pack in self._index.packs.items()
            if stem != own and (pack.dead >= COMPACT_DEAD * pack.total or (len(small) > 1 and stem in small))
        ]
        locked = [(stem, fd) for stem in wanted if (fd := self._index.lock(stem)) >= 0]
        if not locked:
            return
        try:
            self._copy_live(locked)
            self._make_durable()
        except OSError as exc:
            log.warning("compaction of %s stopped, nothing removed: %s", self.dir, exc)
            for _, fd in locked:
                os.close(fd)
            return
        for stem, fd in locked:
            try:
                for suffix in (".pack", *SIDE_FILES):  # the pack first: once it is gone, the stem is gone
                    (self.dir / f"{stem}{suffix}").unlink(missing_ok=True)
            finally:
                os.close(fd)
            reader = self._readers.pop(stem, None)
            if reader is not None:
                os.close(reader)
            del self._index.packs[stem]

    def _copy_live(self, locked: list[tuple[str, int]]) -> None:
        """Append every live record of these packs to ours, in runs of at most COPY_BYTES."""
        fds = dict(locked)
        by_stem: dict[str, list[tuple[str, Location]]] = {stem: [] for stem in fds}
        for digest, where in self._index.all():
            if where.stem in by_stem:
                by_stem[where.stem].append((digest, where))
        for stem, live in by_stem.items():
            run: list[tuple[str, bytes]] = []
            held = 0
            for digest, where in sorted(live, key=lambda item: item[1].offset):
                if not self._intact(fds[stem], where, digest):
                    continue  # not that record any more: nothing to keep
                run.append((digest, os.pread(fds[stem], where.size, where.data_offset)))
                held += where.size
                if held >= COPY_BYTES:
                    # No kills: the whole pack goes, and a stale reader of it still reads the same bytes.
                    self._append(run, True, kill=False)
                    run, held = [], 0
            self._append(run, True, kill=False)

    def _make_durable(self) -> None:
        """fsync our pack, its index and the directory (the new pack's name): copies survive a power cut."""
        if not self.fsync or self._index.own is None:
            return
        os.fsync(self._fd)
        os.fsync(self._idx_fd)
        fsync_dir(self.dir)

    def records(self) -> Iterator[tuple[str, Path, int, int]]:
        """(digest, pack path, data offset, size) of every live fragment: for checks and tests."""
        with self._lock:
            self._refresh()
            found = list(self._index.all())
        for digest, where in found:
            yield digest, self.dir / f"{where.stem}.pack", where.data_offset, where.size


def shredded(size: int) -> bytes:
    """A killed record as it stays on disk until its pack is compacted: a dead header and zeros, itself a true
    record (its digest is the zeros'), so a walk of the pack steps over it and the deleted bytes are gone."""
    zeros = bytes(size)
    return HEADER.pack(DEAD, size, bytes.fromhex(fragment_hash(zeros))) + zeros


def _write_all(fd: int, parts: list[bytes]) -> None:
    """writev in runs of at most IOV_MAX buffers (no join copy); a short write is finished with write."""
    for start in range(0, len(parts), IOV_MAX):
        run = parts[start : start + IOV_MAX]
        written = os.writev(fd, run)
        if written < sum(map(len, run)):
            view = memoryview(b"".join(run))[written:]
            while view:
                view = view[os.write(fd, view) :]
