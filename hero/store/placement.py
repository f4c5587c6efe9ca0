"""Where fragments and manifest replicas go: spread over backends and, above all, over locations.

Rendezvous hashing gives each object its own stable order of backends, so
load spreads evenly and readers and writers in different processes agree on
it. Slots are then dealt to the location holding the fewest so far, so losing
one location loses at most ceil(n / locations) fragments — at most m when
there are enough locations. A backend gets a second fragment only when every
candidate already has one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import blake3


@dataclass(frozen=True)
class Slot:
    name: str
    location: str


def rendezvous(candidates: Sequence[Slot], seed: str) -> list[Slot]:
    return sorted(candidates, key=lambda c: blake3.blake3(f"{seed}\0{c.name}".encode()).digest(), reverse=True)


def place(candidates: Sequence[Slot], n: int, seed: str) -> list[str]:
    """Backend names for n fragments, balanced by location then by backend.

    A pure function of its arguments, remembered: every put of an object asks the
    same question again (~0.1 ms of Python per answer, a put's budget is a few ms).
    """
    return list(_place(tuple(candidates), n, seed))


@functools.lru_cache(maxsize=8192)
def _place(candidates: tuple[Slot, ...], n: int, seed: str) -> tuple[str, ...]:
    if not candidates:
        return ()
    order = rendezvous(candidates, seed)
    rank = {c.name: i for i, c in enumerate(order)}
    per_location: dict[str, int] = {}
    per_backend: dict[str, int] = {}
    out: list[str] = []
    for _ in range(n):
        fewest_uses = min(per_backend.get(c.name, 0) for c in order)
        free = [c for c in order if per_backend.get(c.name, 0) == fewest_uses]
        best = min(free, key=lambda c: (per_location.get(c.location, 0), rank[c.name]))
        out.append(best.name)
        per_backend[best.name] = per_backend.get(best.name, 0) + 1
        per_location[best.location] = per_location.get(best.location, 0) + 1
    return tuple(out)


def replica_targets(everyone: Sequence[Slot], usable: set[str], seed: str, count: int) -> list[str]:
    """Where an object's manifest replicas go: its preferred distinct backends, with usable stand-ins for the rest."""
    preferred = place(everyone, min(count, len(everyone)), seed)
    if usable.issuperset(preferred) and len(preferred) >= min(count, len(usable)):
        return preferred
    chosen = [name for name in preferred if name in usable]
    for slot in rendezvous(everyone, seed):
        if len(chosen) >= min(count, len(usable)):
            break
        if slot.name in usable and slot.name not in chosen:
            chosen.append(slot.name)
    return chosen
