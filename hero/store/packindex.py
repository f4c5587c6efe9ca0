"""Which record holds each fragment: one process's map of a pack directory, kept up with other processes.

A process reads the directory's packs once when it opens them and catches up on a miss (`refresh`):
new entries of every other process's index, new deletions, records past the last indexed one, and
packs that vanished (compacted or wiped). An index is checked, not trusted (see `packformat.py`): one
that fails its checksum or names bytes its pack does not hold is set aside and the pack walked; if the
pack's writer is gone its index is written again from the walk, so the next process reads a good one.
The map is a dict of raw digest -> one int holding (pack id, offset, size): ~140 B a fragment, not ~275.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hero.store.packformat import (
    ENTRY,
    HEADER,
    INDEX_MAGIC,
    INDEX_START,
    KILL,
    LIMIT,
    Walk,
    checked_state,
    walk,
    write_index,
)

log = logging.getLogger("hero.store")
MASK40 = LIMIT - 1
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
class PackBooks:
    """What this process knows of one pack: how far it read its files, and its live and dead bytes."""

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


class PackIndex:
    """The map of one directory's packs as this process has read them. Not thread-safe: its owner locks."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.where: dict[bytes, int] = {}  # raw digest -> location as one int (`sid(stem) << 80 | offset << 40 | size`)
        self.packs: dict[str, PackBooks] = {}
        self.own: str | None = None  # the pack this process writes: its entries are already here
        self._stems: list[str] = []
        self._stem_ids: dict[str, int] = {}
        self._stale = False  # records of a pack that vanished may be held by a pack we read before it

    # The map

    def sid(self, stem: str) -> int:
        sid = self._stem_ids.get(stem)
        if sid is None:
            sid = self._stem_ids[stem] = len(self._stems)
            self._stems.append(stem)
        return sid

    def decode(self, loc: int) -> Location:
        return Location(self._stems[loc >> 80], loc >> 40 & MASK40, loc & MASK40)

    def get(self, digest: str) -> Location | None:
        loc = self.where.get(bytes.fromhex(digest))
        return None if loc is None else self.decode(loc)

    def all(self) -> Iterator[tuple[str, Location]]:
        for raw, loc in self.where.items():
            yield raw.hex(), self.decode(loc)

    def assign(self, raw: bytes, loc: int) -> None:
        old = self.where.get(raw)
        if old == loc:  # the same record, indexed again (say, walked before its index entry was read)
            return
        if old is not None:
            self.mark_dead(old)
        self.where[raw] = loc

    def mark_dead(self, loc: int) -> None:
        """Count a record's bytes as dead in its pack's books (what compaction goes by)."""
        stem = self._stems[loc >> 80]
        if stem in self.packs:
            self.packs[stem].dead += HEADER.size + (loc & MASK40)

    def drop(self, digest: str) -> None:
        loc = self.where.pop(bytes.fromhex(digest), None)
        if loc is not None:
            self.mark_dead(loc)

    def refresh(self) -> list[str]:
        """Read what other processes appended or removed since we last looked, oldest pack first.

        Returns the packs that vanished (their read descriptors are the caller's to close).
        """
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        stems = sorted(n[:-5] for n in names if n.endswith(".pack"))
        present = set(stems)
        vanished = [s for s in self.packs if s not in present]  # compacted or wiped
        if vanished:
            self._forget(vanished)
        for stem in stems:
            self._catch_up(stem, self.packs.setdefault(stem, PackBooks()))
        self._sweep_side_files(names, present)
        return vanished

    def found(self, digest: str) -> Location | None:
        """After a refresh: where a record is, reading every index again if a vanished pack may have hidden it."""
        where = self.get(digest)
        if where is None and self._stale:
            self._reindex()
            where = self.get(digest)
        return where

    def _catch_up(self, stem: str, pack: PackBooks) -> None:
        self._read_deletions(stem, pack)
        if stem != self.own:
            self._read_index(stem, pack)
            self._scan_tail(stem, pack)

    def _forget(self, stems: list[str]) -> None:
        """Drop packs that are gone. Their records may live on in a pack whose index we read earlier
        (a compaction's copies): then the next miss reads every index again (`_reindex`)."""
        sids = {self._stem_ids[s] for s in stems if s in self._stem_ids}
        for stem in stems:
            del self.packs[stem]
        gone = [raw for raw, loc in self.where.items() if loc >> 80 in sids]
        for raw in gone:
            del self.where[raw]
        self._stale = self._stale or bool(gone)

    def _reindex(self) -> None:
        """Read every other process's pack again from the start; our own records stay as they are."""
        self._stale = False
        own = self._stem_ids.get(self.own) if self.own is not None else None
        self.where = {raw: loc for raw, loc in self.where.items() if loc >> 80 == own}
        for stem in sorted(self.packs):
            if stem != self.own:
                old = self.packs[stem]  # what was learnt of its writer and index stays: no walk of it again
                self.packs[stem] = pack = PackBooks(index_ok=old.index_ok, finished=old.finished)
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

    def _read_index(self, stem: str, pack: PackBooks) -> None:
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

    def _take_entries(self, stem: str, pack: PackBooks, chunk: bytes, pack_size: int) -> bool:
        """The hot loop of opening a store (every fragment of every pack): raw keys, no Location objects.
        False if an entry goes backwards or past the end of the pack."""
        sid = self.sid(stem)
        where, killed = self.where, pack.killed
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
            loc = sid << 80 | offset << 40 | size
            old = where.get(digest)
            if old != loc:
                if old is not None:
                    self.mark_dead(old)
                where[digest] = loc
        pack.dead += dead
        pack.index_end = end
        pack.total = max(pack.total, end)
        pack.scanned = max(pack.scanned, end)
        return True

    def _read_deletions(self, stem: str, pack: PackBooks) -> None:
        raw = self._unread(self.dir / f"{stem}.del", pack.deleted)
        usable = len(raw) - len(raw) % KILL.size
        sid = self._stem_ids.get(stem, -1)
        for digest, offset in KILL.iter_unpack(raw[:usable]):
            if (offset, digest) in pack.killed:
                continue
            pack.killed.add((offset, digest))
            loc = self.where.get(digest)
            if loc is not None and loc >> 80 == sid and loc >> 40 & MASK40 == offset:
                self.drop(digest.hex())
        pack.deleted += usable

    def _scan_tail(self, stem: str, pack: PackBooks) -> None:
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

    def _take_walk(self, stem: str, pack: PackBooks, found: Walk) -> None:
        sid = self.sid(stem)
        for raw, offset, size, live in found.records:
            if live and (offset, raw) not in pack.killed:
                self.assign(raw, sid << 80 | offset << 40 | size)
            else:
                pack.dead += HEADER.size + size
        pack.dead += found.skipped
        pack.scanned = max(pack.scanned, found.end)
        pack.total = max(pack.total, pack.scanned)

    def distrust(self, stem: str) -> None:
        """A read found the pack disagreeing with its index: walk the pack, unless it has not changed since."""
        pack = self.packs.get(stem)
        if pack is None or stem == self.own:
            return
        try:
            st = os.stat(self.dir / f"{stem}.pack")
        except FileNotFoundError:
            return
        if pack.walked != (st.st_size, st.st_mtime_ns):
            self._rewalk(stem, pack)

    def _rewalk(self, stem: str, pack: PackBooks) -> None:
        """Index a pack from its own records alone; if its writer is gone, write its index again from them."""
        path = self.dir / f"{stem}.pack"
        sid = self.sid(stem)
        taken = [r for r, loc in self.where.items() if loc >> 80 == sid]
        for raw in taken:
            del self.where[raw]
        self._stale = self._stale or bool(taken)  # an entry dropped here may have hidden a good copy elsewhere
        lock = self.lock(stem)
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

    def lock(self, stem: str) -> int:
        """A descriptor holding the pack's lock if its writer is gone (and no one compacts it), else -1."""
        if stem == self.own:
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
        lock = self.lock(stem)
        if lock >= 0:
            os.close(lock)
            self.packs[stem].finished = True
        return lock >= 0
