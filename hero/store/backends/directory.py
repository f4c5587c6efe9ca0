"""A backend in one local directory: fragments in append-only packs (`packs.py`), meta files in `meta/`.

Its calls are blocking (`*_sync`) with an async face that runs them in the
store's I/O executor; the pool batches the blocking ones of every directory
backend into one executor job and one syncfs per filesystem (`pool.py`).
An unusable directory (a file, a dangling symlink, a missing disk) is down
and says why; it is tried again on its next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from hero.errors import Conflict, IntegrityError, StorageError
from hero.store.backends.protocol import (
    BackendDown,
    BackendFull,
    BackendStat,
    FragmentInfo,
    check_digest,
    check_meta_name,
)
from hero.store.packs import PackFiles
from hero.store.pipeline import HEX64, fragment_hash

T = TypeVar("T")
TMP_MAX_AGE_S = 3600.0
_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
if _syncfs is not None:
    _syncfs.argtypes = [ctypes.c_int]
    _syncfs.restype = ctypes.c_int


def sync_filesystem(fd: int) -> None:
    """Flush every dirty page and directory entry of the filesystem holding `fd` (os.sync where there is no syncfs)."""
    if _syncfs is None:
        os.sync()
    elif _syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def unusable_reason(root: Path, exc: OSError) -> str:
    """Why a directory backend cannot be used, in an operator's words (which path, and what is wrong with it)."""
    for path in (root, root / "packs", root / "meta", root / "tmp"):
        if path.is_symlink() and not path.exists():
            return f"{path} is a symlink to a missing path ({os.readlink(path)})"
        if path.exists() and not path.is_dir():
            kind = "a file" if path.is_file() else "not a regular file or directory"
            return f"{path} is {kind}, not a directory"
        if not path.exists():
            break
    return f"{exc.filename or root}: {exc.strerror or exc}"


class DirBackend:
    """Fragments and meta files in one directory: append-only packs in `packs/` (see `packs.py`), `meta/<name>`."""

    kind = "dir"

    def __init__(
        self, root: Path, *, name: str, location: str, executor: Executor | None = None, fsync: bool = True,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.location = location
        self.address = str(self.root)
        self.fsync = fsync
        self.verify = verify  # re-hash what is put; off only where the caller hashed the bytes itself
        self._executor = executor
        self._frag = self.root / "packs"
        self._frag_path = str(self._frag)
        self._meta = self.root / "meta"
        self._meta_path = str(self._meta)
        self._tmp = self.root / "tmp"
        self.device = -1  # its filesystem, once open: writes to one filesystem share one syncfs
        self.fault: str | None = None  # why it could not be opened (it is down until it can)
        self._packs: PackFiles | None = None
        self._opening = threading.Lock()
        try:
            self._open()
        except BackendDown as exc:
            self.fault = exc.message

    def _open(self) -> PackFiles:
        """Create or open the layout; a backend that cannot be opened now is tried again on its next call."""
        with self._opening:
            if self._packs is not None:
                return self._packs
            try:
                for path in (self._frag, self._meta, self._tmp):
                    path.mkdir(parents=True, exist_ok=True)
                self.device = os.stat(self.root).st_dev
                self._packs = PackFiles(self._frag, fsync=self.fsync)
                self._adopt_loose_fragments(self._packs)
                self._sweep_tmp()
            except OSError as exc:
                if self._packs is not None:
                    self._packs.close()
                    self._packs = None
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._error(exc) from None
                raise BackendDown(
                    f"backend {self.name} cannot be opened: {unusable_reason(self.root, exc)}"
                ) from None
            self.fault = None
            return self._packs

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _error(self, exc: OSError) -> StorageError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return BackendFull(f"backend {self.name} ({self.root}) is full: {exc.strerror}")
        return BackendDown(f"backend {self.name} ({self.root}) failed: {exc.strerror or exc}")

    def _check_root(self) -> PackFiles:
        packs = self._packs if self._packs is not None else self._open()
        if not os.path.isdir(self._frag_path):  # every call: a backend whose disk went away is down, not empty
            raise BackendDown(f"backend {self.name}: directory {self._frag} is missing")
        return packs

    def _adopt_loose_fragments(self, packs: PackFiles) -> None:
        """Move fragments of the one-file-per-fragment layout (`fragments/<hash>`, before packs) into a pack.

        Each is re-hashed on the way: only bytes that match their name are adopted; the rest
        stay where they are for an operator to look at. Files go only once the pack is synced.
        """
        loose = self.root / "fragments"
        if not loose.is_dir():
            return
        adopted: list[Path] = []
        for entry in os.scandir(loose):
            if HEX64.match(entry.name):
                data = Path(entry.path).read_bytes()
                if fragment_hash(data) == entry.name:
                    packs.append([(entry.name, data)])
                    adopted.append(Path(entry.path))
        if adopted:
            self.sync()
            for path in adopted:
                path.unlink()
        with contextlib.suppress(OSError):  # not empty: something was not adopted
            loose.rmdir()

    def _sweep_tmp(self) -> None:
        """Temp files left by a killed writer; young ones may belong to a live writer in another process."""
        cutoff = time.time() - TMP_MAX_AGE_S
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):  # a writer in another process just placed it
                if entry.stat().st_mtime < cutoff:
                    Path(entry.path).unlink(missing_ok=True)

    @staticmethod
    def _write_new(path: str, data: bytes) -> bool:
        """Create `path` with `data` unless it exists (False). A partial file left by a failed write is removed."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return True

    def _write_tmp(self, data: bytes) -> str:
        tmp = f"{self._tmp}/{uuid.uuid4().hex}"
        self._write_new(tmp, data)
        return tmp

    def sync(self) -> None:
        """Make every write so far durable: one syncfs for the whole filesystem (data and directory entries)."""
        if not self.fsync:
            return
        try:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                sync_filesystem(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(exc) from None

    # Fragments

    def put_fragments_sync(self, items: Sequence[tuple[str, bytes]], replace: bool = False, sync: bool = True) -> None:
        """Store fragments; with `sync` they are durable on return (callers batching many backends sync once)."""
        for digest, data in items:
            if self.verify and fragment_hash(data) != check_digest(digest):
                raise IntegrityError(f"fragment does not match its hash {digest[:16]}…")
        try:
            self._check_root().append(items, replace=replace)  # content-addressed: a known digest is already stored
        except OSError as exc:
            raise self._error(exc) from None
        if sync:
            self.sync()

    def get_fragments_sync(self, digests: Sequence[str]) -> list[bytes | None]:
        try:
            return self._check_root().read([check_digest(d) for d in digests])
        except OSError as exc:
            raise self._error(exc) from None

    def delete_fragments_sync(self, digests: Sequence[str]) -> int:
        """Deleting is idempotent: digests already gone are skipped."""
        try:
            return self._check_root().delete([check_digest(d) for d in digests])
        except OSError as exc:
            raise self._error(exc) from None

    def list_fragments_sync(self) -> list[FragmentInfo]:
        try:
            return [FragmentInfo(d, size, mtime) for d, size, mtime in self._check_root().entries()]
        except OSError as exc:
            raise self._error(exc) from None

    # Meta files

    def put_meta_sync(self, name: str, data: bytes, replace: bool = False, sync: bool = True) -> bool:
        path = self._meta / check_meta_name(name)
        try:
            self._check_root()
            tmp = self._write_tmp(data)
            try:
                try:
                    self._place(tmp, path, replace)
                except FileNotFoundError:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._place(tmp, path, replace)
            except FileExistsError:
                if path.read_bytes() != data:
                    raise Conflict(f"backend {self.name}: {name} already exists with other content") from None
                return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise self._error(exc) from None
        if sync:
            self.sync()
        return True

    @staticmethod
    def _place(tmp: str, path: Path, replace: bool) -> None:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-if-absent, with the whole content already in place

    def get_meta_sync(self, name: str) -> bytes | None:
        """One manifest; a put asks every backend for the next version's, so a miss is kept cheap (no pathlib)."""
        try:
            self._check_root()
            fd = os.open(f"{self._meta_path}/{check_meta_name(name)}", os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc) from None
        try:
            with open(fd, "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._error(exc) from None

    def list_meta_sync(self, directory: str) -> list[str]:
        try:
            self._check_root()
            return os.listdir(self._meta / check_meta_name(directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(exc) from None

    def delete_meta_sync(self, names: Sequence[str]) -> int:
        removed = 0
        try:
            self._check_root()
            for name in names:
                path = self._meta / check_meta_name(name)
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    continue
                with contextlib.suppress(OSError):  # still holds other versions
                    path.parent.rmdir()  # drop a directory left empty, so listings stay short
        except OSError as exc:
            raise self._error(exc) from None
        return removed

    def stat_sync(self) -> BackendStat:
        try:
            count, size = self._check_root().totals()
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise self._error(exc) from None
        return BackendStat(self.name, self.location, self.kind, self.address, count, size, free)

    # The async face, used by QSS and the fragment server

    async def put_fragments(self, items: Sequence[tuple[str, bytes]], *, replace: bool = False) -> None:
        await self._run(self.put_fragments_sync, items, replace)

    async def get_fragments(self, digests: Sequence[str]) -> list[bytes | None]:
        return await self._run(self.get_fragments_sync, digests)

    async def delete_fragments(self, digests: Sequence[str]) -> int:
        return await self._run(self.delete_fragments_sync, digests)

    async def list_fragments(self) -> list[FragmentInfo]:
        return await self._run(self.list_fragments_sync)

    async def put_meta(self, name: str, data: bytes, *, replace: bool = False) -> bool:
        return await self._run(self.put_meta_sync, name, data, replace)

    async def get_meta(self, name: str) -> bytes | None:
        return await self._run(self.get_meta_sync, name)

    async def list_meta(self, directory: str) -> list[str]:
        return await self._run(self.list_meta_sync, directory)

    async def delete_meta(self, names: Sequence[str]) -> int:
        return await self._run(self.delete_meta_sync, names)

    async def stat(self) -> BackendStat:
        return await self._run(self.stat_sync)

    async def aclose(self) -> None:
        if self._packs is not None:
            self._packs.close()

    def blocking(self) -> DirBackend:
        return self
