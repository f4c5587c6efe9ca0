"""Self-healing: re-hash every fragment on a schedule, rebuild what is lost, record where it went.

Unlike zstor (bitrot found only on read) and MinIO (deep scan off by default),
a pass reads every fragment of every version, at a configured rate so it never
crowds out agents. A missing or rotten fragment is rebuilt from k verified
survivors with pyeclib's reconstruct — on ciphertext, so no data key is needed —
written back to its backend or to another healthy one, and the new place is
recorded in a signed placement patch. Reads and degraded writes queue their
object in the repair queue (`repairs.py`); queued repairs run first, fewest
spare fragments first. What passes found is kept in `scrublog.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from hero.errors import IntegrityError, StorageError
from hero.nursery import Nursery
from hero.store import manifest, pipeline
from hero.store.backends.calls import DeleteMeta, PutFragments, PutMeta
from hero.store.catalog import Catalog, ObjectIndex, Resolved, codec_of
from hero.store.config import QSSConfig
from hero.store.damage import Damage
from hero.store.fetch import Fetched, Fetcher
from hero.store.manifest import Patch
from hero.store.placement import rendezvous, replica_targets
from hero.store.repairs import RepairQueue
from hero.store.scrublog import ScrubLog, ScrubReport
from hero.store.workers import Progress

T = TypeVar("T")
log = logging.getLogger("hero.store")
FIRST_PASS_DELAY_S = 600.0
DRAIN_ON_CLOSE_S = 30.0
RETRY_AFTER_S = 60.0  # after an unexpected failure of the background loop
SCRUB_WINDOW_BYTES = 8 << 20


class Pacer:
    """Keeps a pass at or under its byte rate by sleeping; None runs at full speed."""

    def __init__(self, rate_mb_s: float | None) -> None:
        self.rate = rate_mb_s * 1e6 if rate_mb_s else None
        self.began = time.monotonic()
        self.spent = 0

    async def spend(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.rate:
            ahead = self.spent / self.rate - (time.monotonic() - self.began)
            if ahead > 0:
                await asyncio.sleep(ahead)


class Scrubber:
    """Works through the repair queue, and runs a full pass every `scrub_interval_s`.

    It needs only the catalog (manifests, names, the backend pool behind it), the
    repair queue, CPU workers to rebuild on, and its settings and state file.
    """

    def __init__(
        self, catalog: Catalog, repairs: RepairQueue, *, cpu: Executor, config: QSSConfig, state_file: Path,
        purging: Callable[[str], bool] = lambda key: False,
    ) -> None:
        self.catalog = catalog
        self.purging = purging  # whether a key is being purged: a backend that was down brings it back, not to heal
        self.pool = catalog.pool
        self.fetcher = Fetcher(catalog.pool)
        self.repairs = repairs
        self.cpu = cpu
        self.config = config
        self.history = ScrubLog(state_file)
        self._task: asyncio.Task[None] | None = None
        self._started = time.time()
        self._running_pass = False

    async def _compute(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.cpu, fn, *args)

    # Queue

    async def drain(self) -> None:
        """Run every queued repair now."""
        while (queued := self.repairs.pop()) is not None:
            oid, version = queued
            report = ScrubReport(started=time.time())
            try:
                index = await self.catalog.index(oid)
                if version in index.versions():
                    key = self.catalog.known_name(oid)
                    await self.check_version(oid, index, version, report, Pacer(None), key=key)
            except StorageError as exc:
                log.warning("repair of %s version %d failed: %s", oid[:16], version, exc.message)
                report.unrecoverable += 1
            await self.history.record(repairs=report)

    # Background task

    def start(self, nursery: Nursery) -> None:
        if self._task is None:
            self._task = nursery.spawn(self._run(), name="qss-scrubber")

    async def aclose(self) -> None:
        """After the owner's nursery has stopped the background task: run what is still queued, briefly."""
        self._task = None
        if len(self.repairs):
            try:
                async with asyncio.timeout(DRAIN_ON_CLOSE_S):
                    await self.drain()
            except TimeoutError:
                log.warning("%d queued repairs left for the next scrub pass", len(self.repairs))

    async def _run(self) -> None:
        while True:
            try:
                await self.drain()
                due = await self._seconds_to_next_pass()
                if due <= 0:
                    await self.scrub_pass(rate_mb_s=self.config.scrub_rate_mb_s)
                    continue
                await self.repairs.wait(due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrubber failed; trying again in a minute")
                await asyncio.sleep(RETRY_AFTER_S)

    async def _seconds_to_next_pass(self) -> float:
        state = await self.history.load()
        last = state.get("last_finished")
        base = last + self.config.scrub_interval_s if last else self._started + FIRST_PASS_DELAY_S
        return base - time.time()

    # Passes

    async def scrub_pass(self, *, rate_mb_s: float | None = None, progress: Progress | None = None) -> ScrubReport:
        """Check every version of every object of ours once."""
        report = ScrubReport(started=time.time())
        pacer = Pacer(rate_mb_s)
        self._running_pass = True
        await self.history.record(started=report.started)
        try:
            oids, holders, _ = await self.catalog.oids()
            for oid in sorted(oids):
                who = await self.catalog.identify(oid, holders[oid])
                if who.kind in ("foreign", "empty") or (who.key is not None and self.purging(who.key)):
                    continue
                report.objects += 1
                if who.kind == "damaged":
                    report.unrecoverable += 1
                    report.damage(Damage(who.key, oid, None, who.error))
                    continue
                index = await self.catalog.index(oid)
                for version in index.versions():
                    await self.check_version(oid, index, version, report, pacer, progress, key=who.key)
        finally:
            self._running_pass = False
            report.seconds = time.time() - report.started
            await self.history.record(finished=report)
        return report

    async def check_version(
        self, oid: str, index: ObjectIndex, version: int, report: ScrubReport, pacer: Pacer,
        progress: Progress | None = None, *, key: str | None = None,
    ) -> None:
        entry = manifest.entry_name(version)
        broken: list[str] = []  # placement records no replica of which can be verified
        try:
            report.manifests_repaired += await self._heal_meta(oid, index, entry, patch=False)
            for name in index.patches(version):
                try:
                    report.manifests_repaired += await self._heal_meta(oid, index, name, patch=True)
                except IntegrityError as exc:  # what it recorded is found again by hash below
                    log.warning("scrub: placement record %s of %s is unreadable: %s", name, oid[:16], exc.message)
                    broken.append(name)
            resolved = await self.catalog.resolve(oid, index, version)
        except StorageError as exc:
            report.unrecoverable += 1
            report.damage(Damage(key, oid, version, exc.message))
            return
        report.versions += 1
        m = resolved.manifest
        largest = max(1, max(s.plain for s in m.segments))
        per_window = max(1, SCRUB_WINDOW_BYTES // largest)
        moves: list[tuple[int, int, str, str]] = []
        for first in range(0, len(m.segments), per_window):
            segs = list(range(first, min(len(m.segments), first + per_window)))
            fetched = await self.fetcher.fetch(resolved, segs, want_all=True)
            report.checked += len(segs) * m.n
            report.missing += len(fetched.missing)
            report.corrupt += len(fetched.corrupt)
            report.bytes += fetched.bytes
            moves.extend(await self._rebuild(resolved, segs, fetched, report))
            short = [s for s in segs if len(fetched.good[s]) < m.k]
            if short:
                report.damage(Damage(key, oid, version, f"segment {short[0]}: only {len(fetched.good[short[0]])} "
                                     f"of the {m.k} fragments needed are left ({len(short)} segments short)"))
            await pacer.spend(fetched.bytes)
            if progress:
                progress(fetched.bytes)
        if moves:
            await self._write_patch(resolved, moves)
        if broken:
            await self._drop_meta(oid, index, broken)
            report.manifests_repaired += len(broken)

    async def _rebuild(
        self, resolved: Resolved, segs: list[int], fetched: Fetched, report: ScrubReport
    ) -> list[tuple[int, int, str, str]]:
        """Rebuild the lost fragments of these segments; the placement moves to record."""
        m = resolved.manifest
        codec = codec_of(m)
        moves: list[tuple[int, int, str, str]] = []
        lost = fetched.missing | fetched.corrupt
        for s in segs:
            bad = sorted(i for ss, i in lost if ss == s)
            if not bad:
                continue
            for i in bad:
                if (s, i) in fetched.found_elsewhere and (s, i) not in fetched.corrupt:
                    moves.append((s, i, m.segments[s].hashes[i], fetched.found_elsewhere[(s, i)]))
                    report.repaired += 1
            need = [i for i in bad if (s, i) in fetched.corrupt or (s, i) not in fetched.found_elsewhere]
            if not need:
                continue
            good = {i: f for i, f in fetched.good[s].items() if i not in need}
            if len(good) < m.k:
                log.error("scrub: version %d of %s segment %d has %d of %d fragments: cannot rebuild",
                          m.version, m.oid[:16], s, len(good), m.k)
                report.unrecoverable += len(need)
                continue
            rebuilt = await self._compute(codec.reconstruct, good, need)
            hashes = await self._compute(lambda r=rebuilt: {i: pipeline.fragment_hash(f) for i, f in r.items()})
            wrong = [i for i in need if hashes[i] != m.segments[s].hashes[i]]
            if wrong:
                log.error("scrub: rebuilt fragments %s of %s do not match their manifest hashes", wrong, m.oid[:16])
                report.unrecoverable += len(wrong)
            targets = self._targets(resolved, s, [i for i in need if i not in wrong])
            for name, indices in targets.items():
                backend = self.pool.by_name[name]
                items = [(m.segments[s].hashes[i], rebuilt[i]) for i in indices]
                result = await self.pool.attempt(backend, PutFragments(items, replace=True))
                if isinstance(result, StorageError):
                    report.unrecoverable += len(indices)
                    continue
                report.repaired += len(indices)
                moves.extend((s, i, m.segments[s].hashes[i], name) for i in indices if name != resolved.places[s][i])
        return moves

    def _targets(self, resolved: Resolved, s: int, need: list[int]) -> dict[str, list[int]]:
        """Where rebuilt fragments go: back to their backend if it is healthy, else the least-loaded location."""
        pool = self.pool
        names = {b.name for b in pool.writable() if pool.is_up(b.name)}
        location = {b.name: b.location for b in pool.backends}
        places = resolved.places[s]
        keep = [places[i] for i in range(len(places)) if i not in need]
        per_backend = Counter(keep)
        per_location = Counter(location.get(p, "?") for p in keep)
        rank = {slot.name: r for r, slot in enumerate(rendezvous(pool.slots, f"{resolved.manifest.oid}/{s}"))}
        out: dict[str, list[int]] = {}
        for i in need:
            if places[i] in names:
                choice = places[i]
            elif names:
                choice = min(names, key=lambda n: (per_backend[n], per_location[location[n]], rank[n]))
            else:
                continue
            per_backend[choice] += 1
            per_location[location[choice]] += 1
            out.setdefault(choice, []).append(i)
        return out

    async def _write_patch(self, resolved: Resolved, moves: list[tuple[int, int, str, str]]) -> None:
        keys = self.catalog.node_keys
        m = resolved.manifest
        patch = Patch(m.oid, m.version, resolved.digest, time.time(), keys.node_id, tuple(moves))
        blob = manifest.sign_patch(patch, keys)
        name = manifest.patch_name(m.oid, m.version, blob)
        self.catalog.forget_head(m.oid)  # the next read lists the object, so it sees this patch
        usable = {b.name for b in self.pool.writable()}
        targets = replica_targets(self.pool.slots, usable, m.oid, self.config.replicas)
        results = await asyncio.gather(*(self.pool.attempt(b, PutMeta(name, blob)) for b in self.pool.named(targets)))
        if not any(r is True or r is False for r in results):
            log.warning("scrub: placement patch for %s version %d reached no backend; reads will search",
                        m.oid[:16], m.version)

    async def _drop_meta(self, oid: str, index: ObjectIndex, entries: list[str]) -> None:
        """Remove placement records that cannot be read (the fragments' places are recorded again by now)."""
        directory = manifest.object_dir(oid)
        for entry in entries:
            for holder in index.drop(entry):
                await self.pool.attempt(self.pool.by_name[holder], DeleteMeta([f"{directory}/{entry}"]))

    async def _heal_meta(self, oid: str, index: ObjectIndex, entry: str, *, patch: bool) -> int:
        """Bring a manifest or patch back to its full replica count and replace bad copies."""
        pool, replicas = self.pool, self.config.replicas
        holders = index.where.get(entry, [])
        found = await self.catalog.read_meta(oid, entry, holders, patch=patch, fresh=True)
        name = f"{manifest.object_dir(oid)}/{entry}"
        fixed = 0
        for holder in found.bad:
            result = await pool.attempt(pool.by_name[holder], PutMeta(name, found.blob, replace=True))
            if result is True:
                fixed += 1
        present = set(found.good) | set(found.bad)
        usable = {b.name for b in pool.writable() if pool.is_up(b.name)}
        for target in replica_targets(pool.slots, usable, oid, replicas):
            if len(present) >= replicas:
                break
            if target in present:
                continue
            result = await pool.attempt(pool.by_name[target], PutMeta(name, found.blob))
            if result is True or result is False:
                present.add(target)
                index.add(entry, target)
                fixed += int(result is True)
        return fixed

    async def status(self) -> dict[str, Any]:
        state = await self.history.load()
        cfg = self.config
        last = state.get("last") or {}
        return {
            "damaged_objects": last.get("damaged_objects", 0),  # as the last full pass found them
            "damaged": last.get("damaged", []),
            "scrub": {
                "background": self._task is not None,
                "running": self._running_pass,
                "rate_mb_s": cfg.scrub_rate_mb_s,
                "interval_s": cfg.scrub_interval_s,
                "last_started": state.get("last_started"),
                "last_finished": state.get("last_finished"),
                "last": state.get("last"),
            },
            "repairs": {
                "queued": len(self.repairs),
                "repaired_total": state.get("repaired_total", 0),
                "unrecoverable_total": state.get("unrecoverable_total", 0),
            },
        }
