"""Damaged agents: those whose stored objects cannot be read. One such agent never stops the node.

An agent is damaged when its timers object cannot be read at node start, or its
state object when it activates. It is not run while damaged: running it would
write over what could not be read. Its user gets a 503 that says what is wrong in
their words; the operator gets the store's own error (which object, which
fragments) in the log and in the node's agent list. A delivery to a damaged agent
tries the store again once its back-off has passed, so a repaired store or a
backend that came back heals the agent without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from hero.backoff import Backoff
from hero.errors import AgentDamaged, HeroError
from hero.runtime.keys import STATE, TIMERS

log = logging.getLogger("hero.runtime")

# What the user is told, by the object that could not be read.
USER_MESSAGES = {
    STATE: "Your agent's saved state could not be read (its storage is damaged), so it cannot run for now. "
    "The node's operator has been told.",
    TIMERS: "Your agent's saved reminders could not be read (their storage is damaged), so it cannot run for now. "
    "The node's operator has been told.",
}


@dataclass(frozen=True)
class Damage:
    agent_id: str
    part: str  # the object that could not be read: `keys.STATE` or `keys.TIMERS`
    reason: str  # for the operator: the store's error, naming the object and what failed
    since: float  # unix time of the first failure
    failures: int
    retry_at: float  # monotonic time after which a delivery reads the store again

    def error(self) -> AgentDamaged:
        return AgentDamaged(USER_MESSAGES[self.part])


class DamagedAgents:
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._damaged: dict[str, Damage] = {}

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._damaged

    def __len__(self) -> int:
        return len(self._damaged)

    def get(self, agent_id: str) -> Damage | None:
        return self._damaged.get(agent_id)

    def all(self) -> list[Damage]:
        return list(self._damaged.values())

    def mark(self, agent_id: str, part: str, exc: BaseException) -> Damage:
        """Record that `part` of the agent could not be read; log it for the operator once per failure."""
        before = self._damaged.get(agent_id)
        failures = before.failures + 1 if before is not None else 1
        reason = f"{part} unreadable: {getattr(exc, 'message', None) or exc} ({type(exc).__name__})"
        delay = self._backoff.delay_s(failures)
        damage = Damage(
            agent_id, part, reason, before.since if before else time.time(), failures, time.monotonic() + delay
        )
        self._damaged[agent_id] = damage
        log.error("agent %s is damaged: %s; it is not run; next read in %.0fs", agent_id, reason, delay)
        return damage

    @asynccontextmanager
    async def reading(self, agent_id: str, part: str) -> AsyncIterator[None]:
        """Read and decode one of the agent's objects: if that fails the agent is marked damaged and
        `AgentDamaged` raised (the operator's detail goes to the log and the agent list)."""
        try:
            yield
        except AgentDamaged:
            raise
        except (HeroError, ValueError, TypeError) as exc:
            raise self.mark(agent_id, part, exc).error() from None

    def check(self, agent_id: str) -> Damage | None:
        """The agent's damage if a delivery must be refused now; None if it is not damaged or due a retry."""
        damage = self._damaged.get(agent_id)
        if damage is None or time.monotonic() >= damage.retry_at:
            return None
        return damage

    def clear(self, agent_id: str) -> None:
        if self._damaged.pop(agent_id, None) is not None:
            log.warning("agent %s: its stored objects read again; it is no longer damaged", agent_id)
