"""Purges a backend missed, kept on disk and finished when it answers again.

A purge (a user deleting their data: a prefix, or one key) deletes on every
backend, but one that is down keeps what it holds. So the purge is recorded in
DATA/qss/purges.json, written durably (losing it would leave behind data the
user was told is going): its prefix, and for each backend that did not answer
the fragments and manifest names it may still hold. The store finishes it: at start, at once when a
backend comes back (the pool says so), and otherwise after a back-off. A retry
deletes the recorded leftovers, then purges the prefix again for objects that
only a missed backend listed. Once nothing is left the record goes. The
operator sees pending purges in `hero storage status`, and a log line each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hero.backoff import Backoff
from hero.files import replace_file
from hero.nursery import Nursery
from hero.store.backends.calls import DeleteFragments, DeleteMeta
from hero.store.gc import Collector, Leftover, PurgeReport
from hero.store.pool import BackendPool

log = logging.getLogger("hero.store")
FIRST_RETRY_S = 30.0  # without a backend coming back: the first retry, doubling up to MAX_RETRY_S
MAX_RETRY_S = 3600.0


@dataclass
class PendingPurge:
    prefix: str
    since: float
    attempts: int = 0
    leftovers: dict[str, Leftover] = field(default_factory=dict)
    listed_all: bool = True

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PendingPurge:
        leftovers = {name: Leftover(list(left["fragments"]), list(left["meta"]))
                     for name, left in raw["leftovers"].items()}
        return cls(raw["prefix"], float(raw["since"]), int(raw["attempts"]), leftovers, bool(raw["listed_all"]))

    def status(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "since": self.since, "attempts": self.attempts,
                "backends": sorted(self.leftovers), "listed_all": self.listed_all}


def merge(into: dict[str, Leftover], more: dict[str, Leftover]) -> None:
    """Add what `more` says each backend may still hold to `into`."""
    for name, left in more.items():
        merged = into.setdefault(name, Leftover())
        merged.fragments = sorted({*merged.fragments, *left.fragments})
        merged.meta = sorted({*merged.meta, *left.meta})


class PendingPurges:
    def __init__(self, path: Path, collector: Collector, pool: BackendPool) -> None:
        self.path = path
        self._collector = collector
        self._pool = pool
        self._pending: dict[str, PendingPurge] | None = None  # read from `path` on first use
        self._lock = asyncio.Lock()  # one change at a time: a retry and a new purge of the same prefix
        self._wake = asyncio.Event()
        self._due = 0.0  # monotonic time of the next retry
        self._retrying = False
        self._started = False
        pool.on_recovered.append(self._recovered)

    def start(self, nursery: Nursery) -> None:
        if not self._started:
            self._started = True
            nursery.spawn(self.run(), name="qss-purges")

    async def settle(self, report: PurgeReport) -> None:
        """After a purge: record what a backend that did not answer may still hold (`report.pending`), or drop
        the record of that prefix once nothing of it, from this purge or an earlier one, can be left."""
        async with self._lock:
            pending = await self._load()
            entry = pending.get(report.prefix)
            if entry is None and not report.unfinished:
                return
            entry = entry or PendingPurge(report.prefix, time.time())
            merge(entry.leftovers, report.leftovers)  # an earlier purge's leftovers stay until deleted
            entry.listed_all = report.listed_all
            if not entry.leftovers and entry.listed_all:
                pending.pop(report.prefix, None)
                await self._save()
                return
            pending[report.prefix] = entry
            await self._save()
            report.pending = True
        if report.unfinished:
            log.warning("purge of %s left data on %s; it is purged there when they answer again", report.prefix,
                        ", ".join(sorted(report.leftovers)) or "a backend that did not list its objects")
        self._due = time.monotonic() + (FIRST_RETRY_S if report.unfinished else 0.0)
        self._wake.set()  # the loop takes up the new due time

    async def run(self) -> None:
        """The background loop (owned by the store's nursery): retry when a backend is back or a retry is due."""
        await self._load()  # `_due` is 0: what an earlier run left is tried at once
        while True:
            self._wake.clear()
            delay_s = self._due - time.monotonic() if self._pending else None
            if delay_s is None or delay_s > 0:
                with contextlib.suppress(TimeoutError):  # the back-off ran out: retry
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()
            if self._pending and self._due <= time.monotonic():
                try:
                    await self.retry()
                except Exception:  # the next try comes after the back-off, or when a backend is back
                    log.exception("retrying pending purges failed")
                    self._due = time.monotonic() + FIRST_RETRY_S

    async def retry(self) -> None:
        """Try every pending purge once; the next try is at once if a backend comes back, else after a back-off."""
        self._retrying = True
        try:
            async with self._lock:
                pending = await self._load()
                for entry in list(pending.values()):
                    if await self._finish(entry):
                        del pending[entry.prefix]
                        log.warning("purge of %s is finished: every backend answered", entry.prefix)
                if pending or self.path.exists():
                    await self._save()
                tries = max((e.attempts for e in pending.values()), default=0)
                self._due = time.monotonic() + Backoff(FIRST_RETRY_S, MAX_RETRY_S).delay_s(tries)
        finally:
            self._retrying = False

    async def load(self) -> None:
        """Read the record (once): `covers` answers from memory after this."""
        await self._load()

    def any(self) -> bool:
        """Whether some purge is pending (as loaded)."""
        return bool(self._pending)

    def covers(self, key: str) -> bool:
        """Whether `key` is under a pending purge: deleted for everyone, so not listed, and not healed by the
        scrubber, while a backend that was down still holds some of it."""
        return any(key.startswith(prefix) if prefix.endswith("/") else key == prefix for prefix in self._pending or {})

    async def status(self) -> list[dict[str, Any]]:
        """Each pending purge: its prefix, since when, how many retries, and the backends that still hold some."""
        return [entry.status() for entry in (await self._load()).values()]

    async def _finish(self, entry: PendingPurge) -> bool:
        """One retry of one purge; True once nothing of it can be left anywhere."""
        still: dict[str, Leftover] = {}
        for name, left in entry.leftovers.items():
            backend = self._pool.by_name.get(name)
            if backend is None:  # taken out of the configuration: the operator has it, not a backend of ours
                continue
            answered = True
            if left.fragments:
                answered = isinstance(await self._pool.attempt(backend, DeleteFragments(left.fragments)), int)
            if answered and left.meta:
                answered = isinstance(await self._pool.attempt(backend, DeleteMeta(left.meta)), int)
            if not answered:
                still[name] = left
        prefix = entry.prefix  # a folder of keys (a user's agent), or one key (`QSS.delete`: a user's record)
        again = await (self._collector.purge(prefix) if prefix.endswith("/") else self._collector.delete(prefix))
        merge(still, again.leftovers)
        entry.attempts += 1
        entry.leftovers, entry.listed_all = still, again.listed_all
        return not still and again.listed_all

    def _recovered(self, backend: str) -> None:
        """The pool saw a backend answer again: what it missed can be purged now (not for our own retry's calls)."""
        if self._pending and not self._retrying:
            self._due = time.monotonic()
            self._wake.set()

    async def _load(self) -> dict[str, PendingPurge]:
        if self._pending is None:
            def read() -> dict[str, PendingPurge]:
                try:
                    raw = json.loads(self.path.read_text())
                    return {entry["prefix"]: PendingPurge.from_json(entry) for entry in raw["purges"]}
                except FileNotFoundError:
                    return {}
                except (OSError, ValueError, KeyError, TypeError) as exc:  # kept aside for the operator, not lost
                    aside = self.path.with_name(f"{self.path.name}.unreadable")
                    os.replace(self.path, aside)
                    log.error("pending purges in %s cannot be read (%s); moved to %s: run those deletions again",
                              self.path, exc, aside)
                    return {}

            found = await asyncio.to_thread(read)
            if self._pending is None:  # a concurrent first load finished first: its dict (maybe changed) stays
                self._pending = found
        return self._pending

    async def _save(self) -> None:
        """Write the record durably (temp file, fsync, rename, fsync of the folder); none left: no file."""
        if not self._pending:
            await asyncio.to_thread(self.path.unlink, missing_ok=True)
            return
        body = json.dumps({"purges": [asdict(e) for e in self._pending.values()]}).encode()
        await asyncio.to_thread(replace_file, self.path, body, durable=True)
