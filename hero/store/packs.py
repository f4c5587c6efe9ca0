"""Fragments in append-only pack files, 0-db style: one append per put instead of a file per fragment.

A file per fragment costs an inode, a directory entry and a journal record for
every one of the 20 fragments of every put, and a 4 KiB block for a 1.3 KiB
fragment. Here each process appends to a pack file of its own
(`<stem>.pack`: records of header + bytes) and to its index (`<stem>.idx`:
digest, offset, size per record). The pack is the truth and describes itself;
the index only saves reading it: a record whose index entry was lost in a
crash is found again by scanning the pack past the last indexed record. A torn
record at the end of a pack is ignored.

Deleting a record appends (digest, offset) to `<stem>.del` of the pack holding
it, whichever process deletes, so a deletion names exactly one copy and lives
and dies with the bytes it kills; a repair (`replace`) kills the old copy the
same way, so every process agrees on which copy is current. The killed
record's magic is overwritten too, and every read checks the header, so a
process with a stale index reads a deleted record as missing at once. Other
processes' packs are read again on a miss, so a CLI or a fragment server
sharing the directory sees what the node wrote.

A writer holds an exclusive `flock` on its pack for as long as it appends to
it. When gc deletes, packs whose lock can be taken (their writer is gone) and
that are at least half dead, or small, are rewritten into the live pack and
removed, so space comes back and the number of packs stays small.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"HQP1"
DEAD = b"HQPX"  # a killed record's magic, so a process that still thinks it is live reads it as gone
HEADER = struct.Struct(">4sI32s")  # magic, size, raw BLAKE3 digest
ENTRY = struct.Struct(">32sQI")  # raw digest, offset of the header in the pack, size
KILL = struct.Struct(">32sQ")  # raw digest, offset of the dead record's header
PACK_BYTES = 256 << 20  # roll over to a new pack past this size
MASK40 = (1 << 40) - 1
IOV_MAX = 1024  # buffers per writev on Linux
COMPACT_DEAD = 0.5  # rewrite a pack once this share of its bytes is dead,
SMALL_PACK = 8 << 20  # or when it is this small (a short-lived process's pack): merged into the live one
MAX_READERS = 16  # open read descriptors kept per directory (20 local backends: ~360 descriptors at most)


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
    deleted: int = 0  # bytes of its deletion list read so far
    killed: set[int] = field(default_factory=set)  # offsets of its dead records
    scanned: int = 0  # bytes of the pack accounted for (indexed or scanned)
    total: int = 0  # record bytes
    dead: int = 0  # record bytes deleted or superseded
    mtime: float = 0.0


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
        self._stem: str | None = None
        self._path = ""
        self._ino = 0
        self._fd = -1
        self._idx_fd = -1
        self._size = 0
        with self._lock:
            self._refresh()

    # Reading

    def locate(self, digest: str) -> Location | None:
        """Where a fragment's bytes are, refreshing from other processes' packs on a miss."""
        with self._lock:
            found = self._get(digest)
            if found is None:
                self._refresh()
                found = self._get(digest)
            return found

    def read(self, digests: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            if any(bytes.fromhex(d) not in self._where for d in digests):
                self._refresh()
            for digest in digests:
                out.append(self._read_one(digest))
        return out

    def _read_one(self, digest: str) -> bytes | None:
        where = self._get(digest)
        if where is None:
            return None
        fd = self._reader(where.stem)
        if fd < 0:  # compacted away by another process since we read its index
            self._refresh()
            where = self._get(digest)
            fd = self._reader(where.stem) if where else -1
            if where is None or fd < 0:
                return None
        if not self._intact(fd, where, digest):  # killed or moved by another process since we indexed it
            self._refresh()
            where = self._get(digest)
            fd = self._reader(where.stem) if where else -1
            if where is None or fd < 0 or not self._intact(fd, where, digest):
                return None
        return os.pread(fd, where.size, where.data_offset)

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
        entries: list[bytes] = []
        for raw, data in fresh.items():
            records += (HEADER.pack(MAGIC, len(data), raw), data)
            entries.append(ENTRY.pack(raw, offset, len(data)))
            offset += HEADER.size + len(data)
        try:
            _write_all(self._fd, records)
            _write_all(self._idx_fd, entries)
        except OSError:
            self._abandon(start)
            raise
        self._size = offset
        replaced = {raw.hex(): self._unpack(where[raw]) for raw in fresh if raw in where} if kill else {}
        if replaced:
            self._kill(replaced)
        sid = self._sid(self._stem)
        offset = start
        for raw, data in fresh.items():
            old = where.get(raw)
            if old is not None:
                self._mark_dead(old)
            where[raw] = sid << 80 | offset << 40 | len(data)
            offset += HEADER.size + len(data)
        pack = self._packs[self._stem]
        pack.scanned = pack.total = offset
        pack.indexed += len(entries) * ENTRY.size
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
        """Append each record to its pack's deletion list."""
        by_stem: dict[str, list[bytes]] = {}
        for digest, where in records.items():
            by_stem.setdefault(where.stem, []).append(KILL.pack(bytes.fromhex(digest), where.offset))
            if where.stem in self._packs:
                self._packs[where.stem].killed.add(where.offset)
        for stem, entries in by_stem.items():
            fd = os.open(self.dir / f"{stem}.del", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _write_all(fd, entries)
            finally:
                os.close(fd)
            try:
                fd = os.open(self.dir / f"{stem}.pack", os.O_WRONLY)
            except FileNotFoundError:
                continue
            try:
                for entry in entries:
                    os.pwrite(fd, DEAD, KILL.unpack(entry)[1])
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
        self._stem, self._fd, self._idx_fd, self._size = stem, fd, idx, 0
        self._path = str(self.dir / f"{stem}.pack")
        self._ino = os.fstat(fd).st_ino
        self._packs[stem] = _Pack(mtime=time.time())

    def _still_ours(self) -> bool:
        """False once our pack file is gone or another file took its name (a wiped directory)."""
        try:
            return os.stat(self._path).st_ino == self._ino
        except FileNotFoundError:
            return False

    def _abandon(self, size: int) -> None:
        """After a failed append: cut the pack back, or leave it to a new one if even that fails."""
        try:
            os.ftruncate(self._fd, size)
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

    def _pack(self, where: Location) -> int:
        return self._sid(where.stem) << 80 | where.offset << 40 | where.size

    def _unpack(self, packed: int) -> Location:
        return Location(self._stems[packed >> 80], packed >> 40 & MASK40, packed & MASK40)

    def _get(self, digest: str) -> Location | None:
        packed = self._where.get(bytes.fromhex(digest))
        return None if packed is None else self._unpack(packed)

    def _all(self) -> Iterator[tuple[str, Location]]:
        for raw, packed in self._where.items():
            yield raw.hex(), self._unpack(packed)

    def _set(self, digest: str, where: Location) -> None:
        raw, packed = bytes.fromhex(digest), self._pack(where)
        old = self._where.get(raw)
        if old == packed:  # the same record, indexed again (say, scanned before its index entry was read)
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
        for stem in [s for s in self._packs if s not in present]:  # compacted or wiped
            del self._packs[stem]
            fd = self._readers.pop(stem, None)
            if fd is not None:
                os.close(fd)
            sid = self._stem_ids.get(stem, -1)
            for raw in [r for r, packed in self._where.items() if packed >> 80 == sid]:
                del self._where[raw]
        for stem in stems:
            pack = self._packs.setdefault(stem, _Pack())
            self._read_deletions(stem, pack)
            if stem != self._stem:
                self._read_index(stem, pack)
                self._scan_tail(stem, pack)

    def _unread(self, path: Path, start: int, record: int) -> bytes:
        """The whole records appended to `path` since `start` (a torn last one is left for next time)."""
        try:
            with open(path, "rb") as f:
                f.seek(start)
                raw = f.read()
        except FileNotFoundError:
            return b""
        return raw[: len(raw) - len(raw) % record]

    def _read_index(self, stem: str, pack: _Pack) -> None:
        raw = self._unread(self.dir / f"{stem}.idx", pack.indexed, ENTRY.size)
        usable = len(raw)
        # The hot loop of opening a store (every fragment of every pack): raw keys, no Location objects.
        sid = self._sid(stem)
        where, killed, end = self._where, pack.killed, pack.total
        for digest, offset, size in ENTRY.iter_unpack(raw):
            end = max(end, offset + HEADER.size + size)
            packed = sid << 80 | offset << 40 | size
            old = where.get(digest)
            if offset in killed:
                pack.dead += HEADER.size + size
            elif old != packed:
                if old is not None:
                    self._mark_dead(old)
                where[digest] = packed
        pack.total = end
        pack.indexed += usable
        pack.scanned = max(pack.scanned, pack.total)

    def _read_deletions(self, stem: str, pack: _Pack) -> None:
        raw = self._unread(self.dir / f"{stem}.del", pack.deleted, KILL.size)
        usable = len(raw)
        for digest, offset in KILL.iter_unpack(raw):
            hexd = digest.hex()
            where = self._get(hexd)
            if offset not in pack.killed and where is not None and where.stem == stem and where.offset == offset:
                self._drop(hexd)
            pack.killed.add(offset)
        pack.deleted += usable

    def _scan_tail(self, stem: str, pack: _Pack) -> None:
        """Index records past the last indexed one: appended by a writer that died before its index entry."""
        path = self.dir / f"{stem}.pack"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        pack.mtime = st.st_mtime
        if st.st_size <= pack.scanned:
            return
        with open(path, "rb") as f:
            f.seek(pack.scanned)
            tail = f.read()
        pos = 0
        while pos + HEADER.size <= len(tail):
            magic, size, digest = HEADER.unpack_from(tail, pos)
            if magic not in (MAGIC, DEAD) or pos + HEADER.size + size > len(tail):
                break  # torn or still being written: read again next time
            if magic == MAGIC and pack.scanned + pos not in pack.killed:
                self._set(digest.hex(), Location(stem, pack.scanned + pos, size))
            pos += HEADER.size + size
        pack.scanned += pos
        pack.total = max(pack.total, pack.scanned)

    # Space

    def _compact(self) -> None:
        """Rewrite the live records of mostly dead or small packs into ours, then remove those packs.

        Only packs whose writer is gone: its lock must be free. A small pack is merged only
        if there is another small one, so one process's own last pack is left alone.
        """
        small = [s for s, p in self._packs.items() if s != self._stem and p.total < SMALL_PACK]
        for stem, pack in list(self._packs.items()):
            if stem == self._stem:
                continue
            if not (pack.dead >= COMPACT_DEAD * pack.total or (len(small) > 1 and stem in small)):
                continue
            try:
                fd = os.open(self.dir / f"{stem}.pack", os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                live = [(d, w) for d, w in self._all() if w.stem == stem]
                # No kills: the whole pack goes, and a stale reader of it still reads the same bytes.
                self._append([(d, os.pread(fd, w.size, w.data_offset)) for d, w in live], True, kill=False)
                for suffix in (".pack", ".idx", ".del"):
                    (self.dir / f"{stem}{suffix}").unlink(missing_ok=True)
            finally:
                os.close(fd)
            reader = self._readers.pop(stem, None)
            if reader is not None:
                os.close(reader)
            del self._packs[stem]

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
