"""Delivering due timers to their agents, and what happens when that fails.

A due timer becomes a `TimerFired` event in a task of the node's nursery. Over
the power budget it is deferred as the governor asks; when the delivery or the
turn fails it is tried again after a back-off (with no entry in the user's
history and no new state version per try). A poison timer, whose turn raised on
every one of its attempts, is set aside: kept in the agent's state under
`timers_set_aside`, told to the user once and to the operator in the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from hero.errors import HeroError, Overloaded
from hero.nursery import Nursery
from hero.runtime.backoff import Backoff
from hero.runtime.events import Event, Reply, TimerFired
from hero.runtime.report import NodeStats
from hero.runtime.timers import Timer, TimerSchedule

log = logging.getLogger("hero.runtime")


class TimerDelivery:
    def __init__(
        self, deliver: Callable[[str, Event], Awaitable[Reply]], nursery: Nursery, backoff: Backoff, stats: NodeStats
    ) -> None:
        self.schedule = TimerSchedule(self._due)
        self.backoff = backoff
        self.closed = False
        self._deliver = deliver
        self._nursery = nursery
        self._stats = stats

    def close(self) -> None:
        self.closed = True
        self.schedule.close()

    def _due(self, timer: Timer) -> None:
        if not self.closed:
            self._nursery.spawn(self._fire(timer), name=f"timer:{timer.agent_id[:8]}")

    async def _fire(self, timer: Timer) -> None:
        event = TimerFired(timer.timer_id, timer.name, timer.payload, timer.interactive)
        try:
            reply = await self._deliver(timer.agent_id, event)
        except Overloaded as exc:
            self.schedule.add(replace(timer, due=time.time() + exc.retry_after))  # deferred, not dropped
            return
        except HeroError as exc:
            self.failed(timer.timer_id, exc.message)
            return
        try:
            await reply.text()
        except HeroError:
            return  # the turn failed: the node called `failed` from inside it
        self._stats.timers_fired += 1

    def failed(self, timer_id: str, error: str, *, poison: bool = False) -> Timer | None:
        """Re-arm a timer whose delivery or turn failed, after the back-off. A poison timer (its turn
        raised) that has used up its attempts is not re-armed but returned, for `set_aside`."""
        timer = self.schedule.get(timer_id)
        if timer is None:
            return None
        failures = timer.attempts + 1
        if poison and self.backoff.gives_up(failures):
            return replace(timer, attempts=failures)
        delay = self.backoff.delay_s(failures)
        self.schedule.add(replace(timer, due=time.time() + delay, attempts=failures))
        log.warning("timer %s of agent %s failed (%s, attempt %d); next try in %.0fs",
                    timer.name, timer.agent_id[:12], error, failures, delay)
        return None

    def set_aside_in(self, state: dict[str, Any], timer: Timer, error: BaseException) -> str:
        """Take a poison timer off the schedule and keep it in the agent's `state`; returns what the user is told.

        The caller persists the state and the agent's timers object.
        """
        self.schedule.remove(timer.timer_id)
        self._stats.timers_set_aside += 1
        state.setdefault("timers_set_aside", []).append({**timer.to_json(), "error": type(error).__name__})
        log.error("agent %s: timer %s (%s) set aside after %d failed attempts, the last %r",
                  timer.agent_id, timer.name, timer.timer_id, timer.attempts, error)
        return f"Sorry, a scheduled task ({timer.name}) failed {timer.attempts} times and was set aside."
