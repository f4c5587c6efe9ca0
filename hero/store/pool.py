"""The backends of one store and what we last saw of each: up, down or full.

A backend that fails is skipped by writes for a back-off period and then
tried again; reads still try it when the others are not enough. Every
failure is logged once per state change and kept for `status`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hero.store.backends import Backend, BackendDown, BackendFull
from hero.store.placement import Slot

T = TypeVar("T")
log = logging.getLogger("hero.store")
MAX_BACKOFF = 60.0
FULL_BACKOFF = 60.0


@dataclass
class Health:
    state: str = "up"
    error: str | None = None
    since: float = 0.0
    retry_at: float = 0.0
    failures: int = 0
    errors_total: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "since": self.since, "errors_total": self.errors_total}


class BackendPool:
    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)
        self.by_name = {b.name: b for b in self.backends}
        self.health = {b.name: Health(since=time.time()) for b in self.backends}
        self.slots = [Slot(b.name, b.location) for b in self.backends]

    def writable(self) -> list[Backend]:
        """Backends a write may use now: up ones, and failed ones whose back-off has run out."""
        now = time.monotonic()
        return [b for b in self.backends if self.health[b.name].state == "up" or self.health[b.name].retry_at <= now]

    def readable_first(self, names: Sequence[str]) -> list[str]:
        """`names` with backends believed up first, so reads go to the ones likely to answer."""
        return sorted(names, key=lambda n: self.health[n].state != "up" if n in self.health else True)

    def is_up(self, name: str) -> bool:
        return name in self.health and self.health[name].state == "up"

    async def call(self, backend: Backend, op: Callable[[], Awaitable[T]]) -> T:
        """Run one backend operation, recording whether the backend answered."""
        try:
            result = await op()
        except BackendFull as exc:
            self._failed(backend, "full", exc.message, FULL_BACKOFF)
            raise
        except BackendDown as exc:
            health = self.health[backend.name]
            self._failed(backend, "down", exc.message, min(MAX_BACKOFF, 2.0 ** health.failures))
            raise
        health = self.health[backend.name]
        if health.state != "up":
            log.warning("backend %s is back", backend.name)
            health.state, health.error, health.since, health.failures = "up", None, time.time(), 0
        return result

    def _failed(self, backend: Backend, state: str, message: str, backoff: float) -> None:
        health = self.health[backend.name]
        if health.state != state:
            log.warning("backend %s is %s: %s", backend.name, state, message)
            health.since = time.time()
        health.state, health.error = state, message
        health.failures += 1
        health.errors_total += 1
        health.retry_at = time.monotonic() + backoff

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
