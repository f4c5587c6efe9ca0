"""Helpers for the QSS tests: real stores on disk, real fragment servers on 127.0.0.1."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from hero.identity import NodeKeys
from hero.store.backends import DirBackend
from hero.store.cli import add_storage_parser
from hero.store.fragserver import create_app
from hero.store.qss import QSS, open_qss

AGENT = "agent/" + "ab" * 32


def agent_key(i: int, kind: str = "state") -> str:
    return f"agent/{i:064x}/{kind}"


async def open_store(data: Path, **overrides: Any) -> QSS:
    """A QSS on `data` with 20 local directory backends; no fsync unless asked (tests need speed, not power-loss)."""
    overrides.setdefault("fsync", False)
    return await open_qss(data, NodeKeys.load_or_create(data), **overrides)


def fragment_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("**/fragments/*") if p.is_file())


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fragment_server(directory: Path, trusted: list[str], *, location: str = "remote") -> Iterator[str]:
    """A real `hero storage serve` app under uvicorn on a free 127.0.0.1 port, in a thread; yields its URL."""
    port = free_port()
    app = create_app(DirBackend(directory, name=f"serve-{port}", location=location, fsync=False), trusted)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
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
