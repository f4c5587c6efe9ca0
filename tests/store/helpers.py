"""Helpers for the QSS tests: real stores on disk, real fragment servers on 127.0.0.1."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from hero.identity import NodeKeys
from hero.store.backends.directory import DirBackend
from hero.store.cli import add_storage_parser
from hero.store.fragserver import create_app
from hero.store.packs import PackFiles
from hero.store.qss import QSS, open_qss

AGENT = "agent/" + "ab" * 32


def agent_key(i: int, kind: str = "state") -> str:
    return f"agent/{i:064x}/{kind}"


async def open_store(data: Path, **overrides: Any) -> QSS:
    """A QSS on `data` with 20 local directory backends; no fsync unless asked (tests need speed, not power-loss)."""
    overrides.setdefault("fsync", False)
    return await open_qss(data, NodeKeys.load_or_create(data), **overrides)


@dataclass(frozen=True)
class StoredFragment:
    """One fragment as a directory backend holds it (a record in a pack), with the file-like faults tests inject.

    Every call looks the record up afresh, as another process would, so a repair's new copy is what it reads.
    """

    packs: Path  # the backend's packs/ directory
    name: str  # the digest

    @property
    def backend(self) -> str:
        return self.packs.parent.name

    def _where(self) -> tuple[Path, int, int] | None:
        files = PackFiles(self.packs)
        try:
            found = files.locate(self.name)
            return (self.packs / f"{found.stem}.pack", found.data_offset, found.size) if found else None
        finally:
            files.close()

    def exists(self) -> bool:
        return self._where() is not None

    def read_bytes(self) -> bytes:
        where = self._where()
        assert where is not None, f"fragment {self.name[:16]} is not stored"
        path, offset, size = where
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write_bytes(self, data: bytes) -> None:
        """Overwrite the record in place (shorter data padded with zeros): rot, truncation, a foreign copy."""
        where = self._where()
        assert where is not None
        path, offset, size = where
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data[:size].ljust(size, b"\0"))

    def unlink(self) -> None:
        """Lose the fragment, as when its disk or pack is gone."""
        files = PackFiles(self.packs)
        try:
            assert files.delete([self.name]) == 1
        finally:
            files.close()


def stored_fragment(backend_root: Path, digest: str) -> StoredFragment:
    return StoredFragment(Path(backend_root) / "packs", digest)


def fragment_files(root: Path) -> list[StoredFragment]:
    """Every fragment stored by the directory backends under `root`."""
    out = []
    for packs in sorted(p for p in root.glob("**/packs") if p.is_dir()):
        files = PackFiles(packs)
        try:
            out.extend(StoredFragment(packs, digest) for digest, _, _, _ in files.records())
        finally:
            files.close()
    return sorted(out, key=lambda f: (str(f.packs), f.name))


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fragment_server(
    directory: Path, trusted: list[str], *, location: str = "remote", keep_alive_s: int = 5
) -> Iterator[str]:
    """A real `hero storage serve` app under uvicorn on a free 127.0.0.1 port, in a thread; yields its URL.

    `keep_alive_s` is how long the server keeps an idle connection open (uvicorn's default, 5 s, unless told).
    """
    port = free_port()
    app = create_app(DirBackend(directory, name=f"serve-{port}", location=location, fsync=False), trusted)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           timeout_keep_alive=keep_alive_s))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("fragment server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def storage_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hero")
    add_storage_parser(parser.add_subparsers())
    return parser


DOWN = ("05", "06")  # the directory backends `unplug` takes down


def unplug(backends: Path, names: tuple[str, ...] = DOWN) -> None:
    """These backends' disks are gone: a file where each directory was (a store opening them finds them down,
    not empty and new); what they held is kept aside in `gone-NN`."""
    for n in names:
        (backends / n).rename(backends / f"gone-{n}")
        (backends / n).write_text("not mounted")


def plug(backends: Path, names: tuple[str, ...] = DOWN) -> None:
    for n in names:
        (backends / n).unlink()
        (backends / f"gone-{n}").rename(backends / n)
