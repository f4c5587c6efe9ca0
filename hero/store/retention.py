"""The operator's standing `gc --keep N`: `keep_versions` in storage.toml, applied on a schedule.

Every put makes a version and the runtime writes about two per chat turn, so
without gc a long-lived node's manifests and fragments grow without end. Old
versions still go only by the operator's intent: this runs only when
`keep_versions` is set (0, the default, keeps everything).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from hero.errors import HeroError
from hero.nursery import Nursery

if TYPE_CHECKING:
    from hero.store.qss import QSS

log = logging.getLogger("hero.store")
FIRST_RUN_DELAY = 60.0  # not at start-up: agents wake first


class Retention:
    def __init__(self, qss: QSS, *, keep: int, interval: float, first_delay: float = FIRST_RUN_DELAY) -> None:
        self.qss = qss
        self.keep = keep
        self.interval = interval
        self.first_delay = first_delay
        self.last: dict[str, Any] | None = None
        self.removed_total = 0
        self._started = False

    def start(self, nursery: Nursery) -> None:
        if self.keep > 0 and not self._started:
            self._started = True
            nursery.spawn(self._run(), name="qss-retention")

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            began = time.time()
            try:
                report = await self.qss.gc(self.keep)
            except HeroError as exc:  # a backend down, a conflict with a writer: the next run tries again
                log.warning("retention gc (keep %d) failed: %s", self.keep, exc.message)
                report = {"error": exc.message}
            else:
                self.removed_total += report["versions_removed"]
                if report["versions_removed"] or report["orphans_removed"]:
                    log.info("retention gc kept %d versions per object: %s", self.keep, report)
            self.last = {"started": began, "seconds": time.time() - began, **report}
            await asyncio.sleep(self.interval)

    def status(self) -> dict[str, Any]:
        return {"keep_versions": self.keep, "interval_s": self.interval, "last": self.last,
                "versions_removed_total": self.removed_total}
