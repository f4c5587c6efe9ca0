"""Interim state store: one local directory, one file per version, atomic writes.

Serves the store seam until QSS is the default. A version file is written to a
temp name, fsynced and linked into place, so a crash leaves either the old head
or the new one, never a torn file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from hero.errors import NotFound, StaleEpoch
from hero.store.base import Version, check_key


class DirStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def _dir(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes, *, epoch: int) -> Version:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self._put, key, data, epoch)

    def _put(self, key: str, data: bytes, epoch: int) -> Version:
        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        while True:
            head = self._versions(key)
            if head and head[-1].epoch > epoch:
                raise StaleEpoch(f"write to {key} with epoch {epoch} refused: head has epoch {head[-1].epoch}")
            number = head[-1].version + 1 if head else 1
            meta = {"epoch": epoch, "created": time.time(), "size": len(data)}
            header = json.dumps(meta).encode() + b"\n"
            tmp = d / f".tmp-{os.getpid()}-{number}"
            with open(tmp, "wb") as f:
                f.write(header + data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, d / f"{number:012d}.v")
            except FileExistsError:
                continue  # another writer took this number; re-check the fence and retry
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(d)
            return Version(key, number, len(data), epoch, meta["created"])

    async def get(self, key: str, version: int | None = None) -> bytes:
        return await asyncio.to_thread(self._get, key, version)

    def _get(self, key: str, version: int | None) -> bytes:
        d = self._dir(key)
        if version is None:
            versions = self._versions(key)
            if not versions:
                raise NotFound(f"no object {key!r}")
            version = versions[-1].version
        try:
            raw = (d / f"{version:012d}.v").read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no version {version} of {key!r}") from None
        return raw[raw.index(b"\n") + 1 :]

    async def versions(self, key: str) -> list[Version]:
        return await asyncio.to_thread(self._versions, key)

    def _versions(self, key: str) -> list[Version]:
        d = self._dir(key)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.glob("*.v")):
            with open(p, "rb") as f:
                meta = json.loads(f.readline())
            out.append(Version(key, int(p.stem), meta["size"], meta["epoch"], meta["created"]))
        return out

    async def keys(self, prefix: str = "") -> list[str]:
        return await asyncio.to_thread(self._keys, prefix)

    def _keys(self, prefix: str) -> list[str]:
        found = {str(p.parent.relative_to(self.root)) for p in self.root.rglob("*.v")}
        return sorted(k for k in found if k.startswith(prefix))

    async def close(self) -> None:
        self._locks.clear()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
