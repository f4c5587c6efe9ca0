"""The node's durable timers: stored per agent, held in one schedule, delivered as events, retried, set aside.

An agent's pending timers are one object in the store (`agent/<id>/timers`),
written under the agent's lease whenever one is set, cancelled or fired, so they
survive restarts and fire for hibernated agents. A due timer becomes a
`TimerFired` event in a task of the node's nursery. Over the power budget it is
deferred as the governor asks; when the delivery or the turn fails it is tried
again after a back-off (with no entry in the user's history and no new state
version per try). A poison timer, whose turn raised on every one of its
attempts, is set aside: kept in the agent's state under `timers_set_aside`, told
to the user once and to the operator in the log.

A timer is removed from the store once its turn is done (or the agent cancels
it). When that write fails the timer is not lost track of: it stays in the
schedule marked as removed, is never delivered again, and its removal is written
again after the back-off until it is stored (any later write of the agent's
timers stores it too). So a failed removal does not make the timer fire twice
here. Nor after a restart before the removal was stored: a timer's id is put in
the agent's state (`timers_fired`, the last `FIRED_KEPT`) before its turn runs,
so it is stored with what the turn stored, and a timer found there is not run
again, only removed (`begin`).

Old versions of the timers object hold nothing the newest does not: all but
the newest `HEAD_VERSIONS` are pruned in the background every `PRUNE_SLACK`
writes (`pruning.py`), never once the node is closing.

Timers fire on the node that holds their agent's lease (`leases.py`): a node
schedules only the timers of agents it holds, drops them when it loses the
lease (`drop`), and a timer that finds its agent held elsewhere leaves the
schedule: the holder has it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from hero.backoff import Backoff
from hero.errors import HeroError, LeaseHeld, Overloaded
from hero.nursery import Nursery
from hero.runtime.damage import DamagedAgents
from hero.runtime.events import Event, Reply, TimerFired
from hero.runtime.keys import TIMERS, timers_key
from hero.runtime.pruning import HEAD_VERSIONS, HeadPruner, HeadVersions
from hero.runtime.report import NodeStats
from hero.runtime.timers import Timer, TimerSchedule, decode_timers
from hero.seams.directory import Lease
from hero.seams.store import StateStore

log = logging.getLogger("hero.runtime")

FIRED = "timers_fired"  # the agent state's key for the ids of the timers whose turns ran, newest last
FIRED_KEPT = 16  # ids kept there: a removal not stored after this many later timers was stored by their writes


class DurableTimers:
    def __init__(
        self,
        store: StateStore,
        deliver: Callable[[str, Event], Awaitable[Reply]],
        nursery: Nursery,
        backoff: Backoff,
        damaged: DamagedAgents,
        stats: NodeStats,
        check: Callable[[Lease], None] = lambda lease: None,
        keep_versions: int = HEAD_VERSIONS,
    ) -> None:
        self.schedule = TimerSchedule(self._due)
        self.backoff = backoff
        self.closed = False
        self._store = store
        self._deliver = deliver
        self._nursery = nursery
        self._damaged = damaged
        self._stats = stats
        self._check = check  # may this node still write under the lease (leases.py)
        # timers done (fired or cancelled) whose removal is not stored yet: the lease to write it under, failures
        self._removing: dict[str, tuple[Lease, int]] = {}
        self._pruner = HeadPruner(store, lambda coro, name: nursery.spawn(coro, name=name), keep_versions,
                                  key=timers_key, what="timers")
        self._versions: dict[str, HeadVersions] = {}  # agent id -> its timers object's last version, its pruning

    def close(self) -> None:
        """No more deliveries: the schedule's loop timer is cancelled (timers stay stored)."""
        self.closed = True
        self.schedule.close()
        self._pruner.close()

    # storage

    async def load(self, agent_id: str) -> None:
        """Schedule the agent's stored timers; if they cannot be read the agent is damaged (`AgentDamaged`)."""
        async with self._damaged.reading(agent_id, TIMERS):
            head = await self._store.latest(timers_key(agent_id))
            timers = decode_timers(head[1]) if head else []
        for timer in timers:
            self.schedule.add(timer)

    def drop(self, agent_ids: list[str]) -> None:
        """This node lost these agents' leases: their timers fire where the agents are now."""
        for agent_id in agent_ids:
            self._versions.pop(agent_id, None)  # its pruning goes with it (bounded by the agents with timers here)
            for timer in self.schedule.pending(agent_id):
                self.schedule.remove(timer.timer_id)
                self._removing.pop(timer.timer_id, None)

    async def add(self, lease: Lease, timer: Timer) -> None:
        self.schedule.add(timer)
        await self.write(lease)

    async def remove(self, lease: Lease, timer_id: str) -> None:
        """The timer is done (its turn ran, or the agent cancelled it). If its removal cannot be written now it
        is written again later: the timer is never delivered again either way, so this does not raise."""
        timer = self.schedule.get(timer_id)
        if timer is None or timer_id in self._removing:
            return
        self.schedule.remove(timer_id)
        try:
            await self.write(lease)
        except HeroError as exc:
            self._removal_failed(lease, timer, 1, exc.message)

    async def write(self, lease: Lease) -> None:
        """Store the agent's pending timers under its lease (a stale epoch is refused by the store); once stored,
        the removals that were waiting for a write are done."""
        pending = self.schedule.pending(lease.agent_id)
        kept = [t.to_json() for t in pending if t.timer_id not in self._removing]
        self._check(lease)
        version = await self._store.put(timers_key(lease.agent_id), json.dumps(kept).encode(), epoch=lease.epoch)
        head = self._versions.setdefault(lease.agent_id, HeadVersions())
        head.version = version.version
        self._pruner.wrote(lease.agent_id, head)
        for timer in pending:
            if self._removing.pop(timer.timer_id, None) is not None:
                self.schedule.remove(timer.timer_id)

    def _removal_failed(self, lease: Lease, timer: Timer, failures: int, error: str) -> None:
        """Keep a done timer in the schedule, marked as removed, due when its removal is to be written again."""
        delay_s = self.backoff.delay_s(failures)
        self._removing[timer.timer_id] = (lease, failures)
        self.schedule.add(replace(timer, due=time.time() + delay_s))
        log.warning("timer %s of agent %s is done but its removal was not stored (%s, attempt %d); "
                    "next try in %.0fs; it is not delivered again", timer.name, timer.agent_id[:12], error,
                    failures, delay_s)

    async def _write_removal(self, timer: Timer, lease: Lease, failures: int) -> None:
        try:
            await self.write(lease)
        except HeroError as exc:
            self._removal_failed(lease, timer, failures + 1, exc.message)

    # delivery and its failures

    def begin(self, state: dict[str, Any], timer_id: str) -> bool:
        """Whether the timer's turn is to run: not if the agent's state records it as run (its removal was not
        stored before a restart). Else its id is recorded there, to be stored with what the turn stores."""
        fired = state.setdefault(FIRED, [])
        if timer_id in fired:
            return False
        fired.append(timer_id)
        del fired[:-FIRED_KEPT]
        return True

    async def finish(self, lease: Lease, timer_id: str, persist: Callable[[], Awaitable[None]]) -> None:
        """The timer's turn is done: remove it. If that is not stored, the state that records the turn as run is
        stored too (a turn need not have stored it), so that a restart does not run it again."""
        await self.remove(lease, timer_id)
        if timer_id in self._removing:
            try:
                await persist()
            except HeroError as exc:
                log.warning("agent %s: state not stored after timer %s's removal failed: %s",
                            lease.agent_id[:12], timer_id, exc.message)

    def _due(self, timer: Timer) -> None:
        if not self.closed:
            self._nursery.spawn(self._fire(timer), name=f"timer:{timer.agent_id[:8]}")

    async def _fire(self, timer: Timer) -> None:
        removal = self._removing.get(timer.timer_id)
        if removal is not None:  # done already: only its removal is due
            await self._write_removal(timer, *removal)
            return
        event = TimerFired(timer.timer_id, timer.name, timer.payload, timer.interactive)
        try:
            reply = await self._deliver(timer.agent_id, event)
        except Overloaded as exc:
            self.schedule.add(replace(timer, due=time.time() + exc.retry_after))  # deferred, not dropped
            return
        except LeaseHeld:
            self.schedule.remove(timer.timer_id)  # its agent is held by another node, which fires it
            return
        except HeroError as exc:
            self.failed(timer.timer_id, exc.message)
            return
        try:
            await reply.text()
        except HeroError:
            return  # the turn failed: the node called `failed` from inside it
        self._stats.timers_fired += 1

    def failed(self, timer_id: str, error: str, *, state: dict[str, Any] | None = None,
               poison: bool = False) -> Timer | None:
        """Re-arm a timer whose delivery or turn failed, after the back-off (a turn that failed is not
        recorded as run in the agent's `state`). A poison timer (its turn raised) that has used up its
        attempts is not re-armed but returned, for `set_aside_in`."""
        if state is not None and timer_id in state.get(FIRED, []):
            state[FIRED].remove(timer_id)
        timer = self.schedule.get(timer_id)
        if timer is None:
            return None
        failures = timer.attempts + 1
        if poison and self.backoff.gives_up(failures):
            return replace(timer, attempts=failures)
        delay_s = self.backoff.delay_s(failures)
        self.schedule.add(replace(timer, due=time.time() + delay_s, attempts=failures))
        log.warning("timer %s of agent %s failed (%s, attempt %d); next try in %.0fs",
                    timer.name, timer.agent_id[:12], error, failures, delay_s)
        return None

    def set_aside_in(self, state: dict[str, Any], timer: Timer, error: BaseException) -> str:
        """Take a poison timer off the schedule and keep it in the agent's `state`; returns what the user is told.

        The caller persists the state and writes the agent's timers.
        """
        self.schedule.remove(timer.timer_id)
        self._stats.timers_set_aside += 1
        state.setdefault("timers_set_aside", []).append({**timer.to_json(), "error": type(error).__name__})
        log.error("agent %s: timer %s (%s) set aside after %d failed attempts, the last %r",
                  timer.agent_id, timer.name, timer.timer_id, timer.attempts, error)
        return f"Sorry, a scheduled task ({timer.name}) failed {timer.attempts} times and was set aside."
