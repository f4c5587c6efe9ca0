"""Fetching a version's fragments: verified by hash, from where the catalog says, or searched for elsewhere.

Shared by reads (k fragments per segment, data fragments and backends believed
up first) and the scrubber (every fragment). A fragment absent or rotten at its
recorded place is noted, and its hash is looked for on the other backends: a
repair's new copy, a placement patch that was lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hero.errors import IntegrityError
from hero.store import pipeline
from hero.store.backends.calls import GetFragments
from hero.store.catalog import Resolved
from hero.store.pool import BackendPool


@dataclass
class Fetched:
    """Verified fragments per (segment, index), and what was found broken on the way."""

    good: dict[int, dict[int, bytes]]
    missing: set[tuple[int, int]] = field(default_factory=set)
    corrupt: set[tuple[int, int]] = field(default_factory=set)
    found_elsewhere: dict[tuple[int, int], str] = field(default_factory=dict)
    bytes: int = 0


class Fetcher:
    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool

    async def fetch(self, resolved: Resolved, segs: Sequence[int], *, want_all: bool) -> Fetched:
        """Verified fragments of `segs`: k each (data first) for reads, all of them for scrubbing.

        A fragment absent or rotten at its recorded place is noted, and its hash
        is looked for on every other backend (a lost placement patch, a rebuilt
        copy). Reads skip backends in back-off unless the others fall short.
        """
        m = resolved.manifest
        fetched = Fetched(good={s: {} for s in segs})
        tried: set[tuple[int, int, str]] = set()

        def at_place(s: int, indices: Sequence[int]) -> list[tuple[int, int, str]]:
            return [(s, i, resolved.places[s][i]) for i in indices if (s, i, resolved.places[s][i]) not in tried]

        if want_all:
            first = [w for s in segs for w in at_place(s, range(m.n))]
        else:
            def up_first(s: int) -> list[int]:
                return sorted(range(m.n), key=lambda i: (not self.pool.is_up(resolved.places[s][i]), i))

            order = {s: up_first(s) for s in segs}
            first = [w for s in segs for w in at_place(s, order[s][: m.k])]
        await self._fetch_round(resolved, first, fetched, tried, skip_down=True)
        short = [s for s in segs if len(fetched.good[s]) < m.k]
        if short and not want_all:
            await self._fetch_round(
                resolved, [w for s in short for w in at_place(s, range(m.n))], fetched, tried, skip_down=False
            )
        search = [(s, i) for s in segs for i in range(m.n) if i not in fetched.good[s]
                  and (want_all or len(fetched.good[s]) < m.k)]
        if search:
            elsewhere = [(s, i, b.name) for s, i in search for b in self.pool.backends if (s, i, b.name) not in tried]
            await self._fetch_round(resolved, elsewhere, fetched, tried, skip_down=want_all)
        fetched.missing -= {(s, i) for s in segs for i in fetched.good[s] if (s, i) not in fetched.found_elsewhere}
        if not want_all:
            for s in segs:
                if len(fetched.good[s]) < m.k:
                    raise IntegrityError(
                        f"version {m.version}, segment {s}: only {len(fetched.good[s])} of the {m.k} fragments "
                        f"needed could be read and verified ({len(fetched.missing)} missing, "
                        f"{len(fetched.corrupt)} corrupt)"
                    )
        return fetched

    async def _fetch_round(
        self, resolved: Resolved, wanted: list[tuple[int, int, str]], fetched: Fetched,
        tried: set[tuple[int, int, str]], *, skip_down: bool,
    ) -> None:
        m = resolved.manifest
        batches: dict[str, list[tuple[int, int]]] = {}
        writable = {b.name for b in self.pool.writable()} if skip_down else set()
        for s, i, name in wanted:
            if i in fetched.good[s]:
                continue
            at_place = name == resolved.places[s][i]
            if name not in self.pool.by_name or (skip_down and not self.pool.is_up(name) and name not in writable):
                if at_place:
                    fetched.missing.add((s, i))
                continue
            tried.add((s, i, name))
            batches.setdefault(name, []).append((s, i))

        names = list(batches)
        results = await self.pool.fanout(
            [(b, GetFragments([m.segments[s].hashes[i] for s, i in batches[b.name]])) for b in self.pool.named(names)],
            post=_hashed,
        )
        for name, result in zip(names, results, strict=True):
            found = [(None, None)] * len(batches[name]) if isinstance(result, Exception) else result
            for (s, i), (blob, got) in zip(batches[name], found, strict=True):
                at_place = name == resolved.places[s][i]
                if blob is None:
                    if at_place:
                        fetched.missing.add((s, i))
                    continue
                fetched.bytes += len(blob)
                if got != m.segments[s].hashes[i]:
                    if at_place:
                        fetched.corrupt.add((s, i))
                elif i not in fetched.good[s]:
                    fetched.good[s][i] = blob
                    if not at_place:
                        fetched.found_elsewhere[(s, i)] = name


def _hashed(blobs: list[bytes | None]) -> list[tuple[bytes | None, str | None]]:
    """Fetched fragments with their BLAKE3 hashes, computed in the worker that read them."""
    return [(b, None if b is None else pipeline.fragment_hash(b)) for b in blobs]
