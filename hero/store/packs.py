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
record's magic is overwritten too (only if the header there is that record's),
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
from dataclasses import dataclass, field
from pathlib import Path

from hero.store.packformat import (
    DEAD,
    ENTRY,
    HEADER,
    INDEX_MAGIC,
    INDEX_START,
    KILL,
    LIMIT,
    MAGIC,
    Walk,
    checked_state,
    index_entries,
    walk,
    write_index,
)

__all__ = ["DEAD", "HEADER", "MAGIC", "MAX_READERS", "Location", "PackFiles"]

log = logging.getLogger("hero.store")
PACK_BYTES = 256 << 20  # roll over to a new pack past this size
MASK40 = LIMIT - 1
IOV_MAX = 1024  # buffers per writev on Linux
COMPACT_DEAD = 0.5  # rewrite a pack once this share of its bytes is dead,
SMALL_PACK = 8 << 20  # or when it is this small (a short-lived process's pack): merged into the live one
COPY_BYTES = 32 << 20  # compaction copies at most this much per append
MAX_READERS = 16  # open read descriptors kept per directory (20 local backends: ~360 descriptors at most)
SIDE_FILES = (".idx", ".del", ".idx-tmp")  # files that belong to a pack and go when it goes


@dataclass(frozen=True)
class Location:
    stem: str
    offset: int  # of the record header
    size: int

    @property
    def data_offset(self) -> int:
        return self.offset + HEADER.size


@dataclass
class _Pack:
    indexed: int = 0  # bytes of its index read so far
    index_state: int = INDEX_START  # the index's running checksum up to `indexed`
    index_end: int = 0  # end of the last record its index named (entries go forward only)
    index_ok: bool = True  # False once its index failed a check while its writer lived: only walked from then on
    deleted: int = 0  # bytes of its deletion list read so far
    killed: set[tuple[int, bytes]] = field(default_factory=set)  # (offset, raw digest) of its dead records
    scanned: int = 0  # bytes of the pack accounted for (indexed or walked)
    total: int = 0  # record bytes
    dead: int = 0  # record bytes deleted, superseded or unreadable
    mtime: float = 0.0
    finished: bool = False  # its writer is gone (seen once its lock was free)
    walked: tuple[int, int] | None = None  # (size, mtime_ns) of the pack when it was last walked whole


class PackFiles:
    """The packs of one directory. Thread-safe; the writer's pack is this process's alone."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.fsync = fsync  # compaction makes its copies durable before it removes their source
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._where: dict[bytes, int] = {}  # raw digest -> packed location (`_pack`): ~140 B a fragment, not ~275
        self._stems: list[str] = []
        self._stem_ids: dict[str, int] = {}
        self._packs: dict[str, _Pack] = {}
        self._readers: OrderedDict[str, int] = OrderedDict()
        self._stale = False  # records of a pack that vanished may be held by a pack we read before it
        self._stem: str | None = None
        self._path = ""
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
            found = self._get(digest)
            if found is None:
                self._refresh()
                found = self._found(digest)
            return found

    def read(self, digests: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            if any(bytes.fromhex(d) not in self._where for d in digests):
                self._refresh()
            for digest in digests:
                out.append(self._read_one(digest))
        return out

    def _found(self, digest: str) -> Location | None:
        """After a refresh: where a record is, reading every index again if a vanished pack may have hidden it."""
        where = self._get(digest)
        if where is None and self._stale:
            self._reindex()
            where = self._get(digest)
        return where

    def _read_one(self, digest: str) -> bytes | None:
        """A record's bytes, if the header where the index points is that record's.

        If it is not: another process may have killed or moved it (read what changed), else the
        index was wrong (walk the pack: it is the truth). Still not there: the entry is dropped.
        """
        where = self._found(digest)
        for attempt in range(3):
            if where is None:
                return None
            fd = self._reader(where.stem)
            if fd >= 0 and self._intact(fd, where, digest):
                return os.pread(fd, where.size, where.data_offset)
            if attempt == 0:
                self._refresh()
            elif attempt == 1:
                self._distrust(where.stem)
            else:
                self._drop(digest)
                return None
            where = self._found(digest)
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
            return len(self._where), sum(packed & MASK40 for packed in self._where.values())

    def entries(self) -> list[tuple[str, int, float]]:
        """(digest, size, mtime of its pack) of every live fragment."""
        with self._lock:
            self._refresh()
            return [(d, w.size, self._packs[w.stem].mtime) for d, w in self._all()]

    # Writing

    def append(self, items: Sequence[tuple[str, bytes]], *, replace: bool = False) -> None:
        """Append fragments (one write to the pack, one to its index); known ones are skipped unless `replace`."""
        with self._lock:
            self._append(items, replace)

    def _append(self, items: Sequence[tuple[str, bytes]], replace: bool, *, kill: bool = True) -> None:
        """The hot path of every put, once per backend: raw keys and packed ints, no objects per record."""
        where = self._where
        fresh: dict[bytes, bytes] = {}
        for digest, data in items:
            raw = bytes.fromhex(digest)
            if replace or raw not in where:
                fresh[raw] = data
        if not fresh:
            return
        self._writable()
        assert self._stem is not None
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
        replaced = {raw.hex(): self._unpack(where[raw]) for raw in fresh if raw in where} if kill else {}
        if replaced:
            self._kill(replaced)
        sid = self._sid(self._stem)
        for raw, offset, size in rows:
            old = where.get(raw)
            if old is not None:
                self._mark_dead(old)
            where[raw] = sid << 80 | offset << 40 | size
        pack = self._packs[self._stem]
        pack.scanned = pack.total = pack.index_end = self._size
        pack.indexed = self._idx_size
        pack.mtime = time.time()

    def delete(self, digests: Sequence[str]) -> int:
        """Forget fragments (listed in the `.del` of each one's pack); packs left mostly dead are compacted."""
        with self._lock:
            self._refresh()
            gone = {d: w for d in dict.fromkeys(digests) if (w := self._get(d)) is not None}
            self._kill(gone)
            for digest in gone:
                self._drop(digest)
            self._compact()
            return len(gone)

    def _kill(self, records: dict[str, Location]) -> None:
        """List each record in its pack's deletion list, then mark its header dead (if it is that record's)."""
        by_stem: dict[str, list[tuple[bytes, Location]]] = {}
        for digest, where in records.items():
            raw = bytes.fromhex(digest)
            by_stem.setdefault(where.stem, []).append((raw, where))
            if where.stem in self._packs:
                self._packs[where.stem].killed.add((where.offset, raw))
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
                        os.pwrite(fd, DEAD, where.offset)
            finally:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._idx_fd, *self._readers.values()):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._idx_fd = -1
            self._readers.clear()
            self._stem = None

    def _writable(self) -> None:
        """Make sure this process has an open pack under its name (a new one after a roll-over or a wipe)."""
        if self._stem is not None:
            if self._size < PACK_BYTES and self._still_ours():
                return
            if self.fsync and self._still_ours():  # a compaction's copies may be in it: durable before we let go
                os.fsync(self._fd)
                os.fsync(self._idx_fd)
            os.close(self._fd)
            os.close(self._idx_fd)
            self._stem = None
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
        self._stem, self._fd, self._idx_fd, self._size = stem, fd, idx, 0
        self._idx_size, self._idx_state = len(INDEX_MAGIC), INDEX_START
        self._path = str(self.dir / f"{stem}.pack")
        self._ino = os.fstat(fd).st_ino
        self._packs[stem] = _Pack(mtime=time.time(), indexed=self._idx_size)

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
            self._stem = None

    # The index in memory

    def _sid(self, stem: str) -> int:
        sid = self._stem_ids.get(stem)
        if sid is None:
            sid = self._stem_ids[stem] = len(self._stems)
            self._stems.append(stem)
        return sid

    def _unpack(self, packed: int) -> Location:
        return Location(self._stems[packed >> 80], packed >> 40 & MASK40, packed & MASK40)

    def _get(self, digest: str) -> Location | None:
        packed = self._where.get(bytes.fromhex(digest))
        return None if packed is None else self._unpack(packed)

    def _all(self) -> Iterator[tuple[str, Location]]:
        for raw, packed in self._where.items():
            yield raw.hex(), self._unpack(packed)

    def _set(self, raw: bytes, packed: int) -> None:
        old = self._where.get(raw)
        if old == packed:  # the same record, indexed again (say, walked before its index entry was read)
            return
        if old is not None:
            self._mark_dead(old)
        self._where[raw] = packed

    def _mark_dead(self, packed: int) -> None:
        """Count a record's bytes as dead in its pack's books (what `_compact` goes by)."""
        stem = self._stems[packed >> 80]
        if stem in self._packs:
            self._packs[stem].dead += HEADER.size + (packed & MASK40)

    def _drop(self, digest: str) -> None:
        packed = self._where.pop(bytes.fromhex(digest), None)
        if packed is not None:
            self._mark_dead(packed)

    def _refresh(self) -> None:
        """Read what other processes appended or removed since we last looked, oldest pack first."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        stems = sorted(n[:-5] for n in names if n.endswith(".pack"))
        present = set(stems)
        vanished = [s for s in self._packs if s not in present]  # compacted or wiped
        if vanished:
            self._forget(vanished)
        for stem in stems:
            self._catch_up(stem, self._packs.setdefault(stem, _Pack()))
        self._sweep_side_files(names, present)

    def _catch_up(self, stem: str, pack: _Pack) -> None:
        self._read_deletions(stem, pack)
        if stem != self._stem:
            self._read_index(stem, pack)
            self._scan_tail(stem, pack)

    def _forget(self, stems: list[str]) -> None:
        """Drop packs that are gone. Their records may live on in a pack whose index we read earlier
        (a compaction's copies): then the next miss reads every index again (`_reindex`)."""
        sids = {self._stem_ids[s] for s in stems if s in self._stem_ids}
        for stem in stems:
            del self._packs[stem]
            fd = self._readers.pop(stem, None)
            if fd is not None:
                os.close(fd)
        gone = [raw for raw, packed in self._where.items() if packed >> 80 in sids]
        for raw in gone:
            del self._where[raw]
        self._stale = self._stale or bool(gone)

    def _reindex(self) -> None:
        """Read every other process's pack again from the start; our own records stay as they are."""
        self._stale = False
        own = self._stem_ids.get(self._stem) if self._stem is not None else None
        self._where = {raw: packed for raw, packed in self._where.items() if packed >> 80 == own}
        for stem in sorted(self._packs):
            if stem != self._stem:
                self._packs[stem] = pack = _Pack()
                self._catch_up(stem, pack)

    def _sweep_side_files(self, names: list[str], present: set[str]) -> None:
        """Index and deletion files whose pack is gone (a compaction cut short, a kill racing one)."""
        for name in names:
            for suffix in SIDE_FILES:
                if name.endswith(suffix) and name[: -len(suffix)] not in present:
                    if not os.path.exists(self.dir / f"{name[: -len(suffix)]}.pack"):
                        (self.dir / name).unlink(missing_ok=True)

    def _unread(self, path: Path, start: int) -> bytes:
        """What was appended to `path` since `start`."""
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read()
        except FileNotFoundError:
            return b""

    def _read_index(self, stem: str, pack: _Pack) -> None:
        """Take in a pack's new index entries, if they pass their checksum and name bytes the pack holds."""
        if not pack.index_ok:
            return
        raw = self._unread(self.dir / f"{stem}.idx", pack.indexed)
        if pack.indexed == 0:
            if len(raw) < len(INDEX_MAGIC):
                if raw != INDEX_MAGIC[: len(raw)]:
                    self._rewalk(stem, pack)  # not an index of ours: the pack is the truth
                return  # no index (yet): the walk of its tail covers the pack
            if raw[: len(INDEX_MAGIC)] != INDEX_MAGIC:  # damaged, or written before entries had checksums
                self._rewalk(stem, pack)
                return
            pack.indexed = len(INDEX_MAGIC)
            raw = raw[len(INDEX_MAGIC) :]
        chunk = raw[: len(raw) - len(raw) % ENTRY.size]  # a torn last entry is left for next time
        if not chunk:
            return
        state = checked_state(chunk, pack.index_state)
        try:
            pack_size = os.stat(self.dir / f"{stem}.pack").st_size  # after the index: it names only bytes written
        except FileNotFoundError:
            return
        if state is None or not self._take_entries(stem, pack, chunk, pack_size):
            self._rewalk(stem, pack)
            return
        pack.indexed += len(chunk)
        pack.index_state = state

    def _take_entries(self, stem: str, pack: _Pack, chunk: bytes, pack_size: int) -> bool:
        """The hot loop of opening a store (every fragment of every pack): raw keys, no Location objects.
        False if an entry goes backwards or past the end of the pack."""
        sid = self._sid(stem)
        where, killed = self._where, pack.killed
        end = pack.index_end
        dead = 0
        for digest, offset, size, _ in ENTRY.iter_unpack(chunk):
            if offset < end or offset + HEADER.size + size > pack_size:
                return False
            dead += offset - end  # bytes a rewritten index leaves out: dead records
            end = offset + HEADER.size + size
            if killed and (offset, digest) in killed:
                dead += HEADER.size + size
                continue
            packed = sid << 80 | offset << 40 | size
            old = where.get(digest)
            if old != packed:
                if old is not None:
                    self._mark_dead(old)
                where[digest] = packed
        pack.dead += dead
        pack.index_end = end
        pack.total = max(pack.total, end)
        pack.scanned = max(pack.scanned, end)
        return True

    def _read_deletions(self, stem: str, pack: _Pack) -> None:
        raw = self._unread(self.dir / f"{stem}.del", pack.deleted)
        usable = len(raw) - len(raw) % KILL.size
        sid = self._stem_ids.get(stem, -1)
        for digest, offset in KILL.iter_unpack(raw[:usable]):
            if (offset, digest) in pack.killed:
                continue
            pack.killed.add((offset, digest))
            packed = self._where.get(digest)
            if packed is not None and packed >> 80 == sid and packed >> 40 & MASK40 == offset:
                self._drop(digest.hex())
        pack.deleted += usable

    def _scan_tail(self, stem: str, pack: _Pack) -> None:
        """Take in records past the last indexed one: appended by a writer that died before its index entry."""
        try:
            st = os.stat(self.dir / f"{stem}.pack")
        except FileNotFoundError:
            return
        pack.mtime = st.st_mtime
        if st.st_size <= pack.scanned:
            return
        found = walk(str(self.dir / f"{stem}.pack"), pack.scanned, finished=pack.finished)
        self._take_walk(stem, pack, found)
        if found.end < st.st_size and not pack.finished and self._writer_gone(stem):
            self._take_walk(stem, pack, walk(str(self.dir / f"{stem}.pack"), found.end, finished=True))

    def _take_walk(self, stem: str, pack: _Pack, found: Walk) -> None:
        sid = self._sid(stem)
        for raw, offset, size, live in found.records:
            if live and (offset, raw) not in pack.killed:
                self._set(raw, sid << 80 | offset << 40 | size)
            else:
                pack.dead += HEADER.size + size
        pack.dead += found.skipped
        pack.scanned = max(pack.scanned, found.end)
        pack.total = max(pack.total, pack.scanned)

    def _distrust(self, stem: str) -> None:
        """A read found the pack disagreeing with its index: walk the pack, unless it has not changed since."""
        pack = self._packs.get(stem)
        if pack is None or stem == self._stem:
            return
        try:
            st = os.stat(self.dir / f"{stem}.pack")
        except FileNotFoundError:
            return
        if pack.walked != (st.st_size, st.st_mtime_ns):
            self._rewalk(stem, pack)

    def _rewalk(self, stem: str, pack: _Pack) -> None:
        """Index a pack from its own records alone; if its writer is gone, write its index again from them."""
        path = self.dir / f"{stem}.pack"
        sid = self._sid(stem)
        for raw in [r for r, packed in self._where.items() if packed >> 80 == sid]:
            del self._where[raw]
        lock = self._lock_pack(stem)
        try:
            pack.finished = pack.finished or lock >= 0
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            found = walk(str(path), 0, finished=pack.finished)
            pack.dead = pack.total = pack.scanned = 0
            self._take_walk(stem, pack, found)
            pack.walked = (st.st_size, st.st_mtime_ns)
            pack.index_end = pack.scanned
            idx = self.dir / f"{stem}.idx"
            if lock >= 0:  # nobody appends to it any more: the next process reads a good index
                live = [(raw, offset, size) for raw, offset, size, ok in found.records
                        if ok and (offset, raw) not in pack.killed]
                pack.indexed, pack.index_state = write_index(str(idx), live)
                pack.index_ok = True
            else:  # its writer still appends: from now on its new records are found by walking its tail
                pack.index_ok = False
        except OSError as exc:
            log.warning("pack %s could not be walked or its index written: %s", path, exc)
            pack.index_ok = False
        finally:
            if lock >= 0:
                os.close(lock)

    def _lock_pack(self, stem: str) -> int:
        """A descriptor holding the pack's lock if its writer is gone (and no one compacts it), else -1."""
        if stem == self._stem:
            return -1
        try:
            fd = os.open(self.dir / f"{stem}.pack", os.O_RDONLY)
        except FileNotFoundError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        return fd

    def _writer_gone(self, stem: str) -> bool:
        lock = self._lock_pack(stem)
        if lock >= 0:
            os.close(lock)
            self._packs[stem].finished = True
        return lock >= 0

    # Space

    def _compact(self) -> None:
        """Rewrite the live records of mostly dead or small packs into ours, then remove those packs.

        Only packs whose writer is gone: its lock must be free. A small pack is merged only
        if there is another small one, so one process's own last pack is left alone. The order
        is what makes it crash-safe: copy, make the copies durable, and only then remove sources.
        """
        small = [s for s, p in self._packs.items() if s != self._stem and p.total < SMALL_PACK]
        wanted = [
            stem for stem, pack in self._packs.items()
            if stem != self._stem and (pack.dead >= COMPACT_DEAD * pack.total or (len(small) > 1 and stem in small))
        ]
        locked = [(stem, fd) for stem in wanted if (fd := self._lock_pack(stem)) >= 0]
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
            del self._packs[stem]

    def _copy_live(self, locked: list[tuple[str, int]]) -> None:
        """Append every live record of these packs to ours, in runs of at most COPY_BYTES."""
        fds = dict(locked)
        by_stem: dict[str, list[tuple[str, Location]]] = {stem: [] for stem in fds}
        for digest, where in self._all():
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
        if not self.fsync or self._stem is None:
            return
        os.fsync(self._fd)
        os.fsync(self._idx_fd)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> Iterator[tuple[str, Path, int, int]]:
        """(digest, pack path, data offset, size) of every live fragment: for checks and tests."""
        with self._lock:
            self._refresh()
            found = list(self._all())
        for digest, where in found:
            yield digest, self.dir / f"{where.stem}.pack", where.data_offset, where.size


def _write_all(fd: int, parts: list[bytes]) -> None:
    """writev in runs of at most IOV_MAX buffers (no join copy); a short write is finished with write."""
    for start in range(0, len(parts), IOV_MAX):
        run = parts[start : start + IOV_MAX]
        written = os.writev(fd, run)
        if written < sum(map(len, run)):
            view = memoryview(b"".join(run))[written:]
            while view:
                view = view[os.write(fd, view) :]
