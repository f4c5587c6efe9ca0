"""What scrubs and repairs found: one pass's report, and the node-local record of them.

The record (DATA/qss/scrub.json) is what `hero storage status` and the dashboard
show: the last pass, when it started and finished, and repair totals. It is
written by the node and read by one-shot CLI commands beside it; losing it loses
nothing but history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hero.files import replace_file
from hero.store.damage import MAX_LISTED, Damage

log = logging.getLogger("hero.store")


@dataclass
class ScrubReport:
    checked: int = 0
    corrupt: int = 0
    missing: int = 0
    repaired: int = 0
    unrecoverable: int = 0
    objects: int = 0
    versions: int = 0
    manifests_repaired: int = 0
    bytes: int = 0
    started: float = 0.0
    seconds: float = 0.0
    damaged_objects: int = 0  # objects with a version that cannot be read or rebuilt (named in `damaged`)
    damaged: list[Damage] = field(default_factory=list)

    def damage(self, found: Damage) -> None:
        """Note a damaged object or version (listed up to MAX_LISTED; every object is counted once)."""
        if not any(d.oid == found.oid for d in self.damaged):
            self.damaged_objects += 1
        if len(self.damaged) < MAX_LISTED:
            self.damaged.append(found)
        log.error("scrub: damaged %s%s: %s", found.key or f"object {found.oid[:16]}…",
                  f" version {found.version}" if found.version is not None else "", found.error)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ScrubLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            try:
                return json.loads(self.path.read_text())
            except (OSError, ValueError):
                return {}

        return await asyncio.to_thread(read)

    async def record(
        self, *, started: float | None = None, finished: ScrubReport | None = None, repairs: ScrubReport | None = None
    ) -> None:
        def write() -> None:
            try:
                state = json.loads(self.path.read_text())
            except (OSError, ValueError):
                state = {}
            if started is not None:
                state["last_started"] = started
            if finished is not None:
                state["last_finished"] = time.time()
                state["last"] = finished.to_json()
                state["repaired_total"] = state.get("repaired_total", 0) + finished.repaired
            if repairs is not None:
                state["repaired_total"] = state.get("repaired_total", 0) + repairs.repaired
                state["unrecoverable_total"] = state.get("unrecoverable_total", 0) + repairs.unrecoverable
            replace_file(self.path, json.dumps(state).encode())

        await asyncio.to_thread(write)
