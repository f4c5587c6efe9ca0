"""Pruning an agent's head: old versions of its state object (and of its timers) dropped in the background.

Old versions of the head hold nothing the newest does not, so all but the
newest `keep` (`HEAD_VERSIONS`) are pruned: every `PRUNE_SLACK` writes while the
agent stays in memory, and after it hibernates. One prune runs per agent at a
time; one asked for while another runs goes after it (the one at hibernation
must see the last write). A prune that fails (a backend down) is left to the
next one. The same holds for the agent's timers object (`durable_timers.py`,
its own pruner with `key=timers_key`), pruned every `PRUNE_SLACK` writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hero.errors import HeroError
from hero.runtime.keys import state_key
from hero.seams.store import StateStore, VersionPruning

log = logging.getLogger("hero.runtime")
HEAD_VERSIONS = 4  # versions of an agent's head (its state object) kept; older ones are pruned
PRUNE_SLACK = 32  # head writes beyond `head_versions` before a prune runs while the agent stays in memory


@dataclass
class HeadVersions:
    """Where one agent's head stands: the version last written or read, and its pruning."""

    version: int = 0  # the version of the head last written or read (0: none yet)
    pruned_at: int = 0  # the head version the last prune kept from (0: none since activation)
    pruning: bool = False
    again: bool = False  # a prune was asked for while one ran


class HeadPruner:
    """Prunes one object of each agent (`key`: its state by default), in tasks `spawn` owns."""

    def __init__(
        self,
        store: StateStore,
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
        keep: int = HEAD_VERSIONS,
        key: Callable[[str], str] = state_key,
        what: str = "state",
    ) -> None:
        self.store = store
        self.keep = max(1, keep)
        self.closing = False
        self._spawn = spawn
        self._key = key
        self._what = what  # the object's name in log lines

    def wrote(self, agent_id: str, head: HeadVersions) -> None:
        """A new head was written: prune once `PRUNE_SLACK` versions beyond `keep` have piled up."""
        if head.version - max(head.pruned_at, 1) >= self.keep + PRUNE_SLACK:
            self.prune(agent_id, head)

    def hibernated(self, agent_id: str, head: HeadVersions) -> None:
        """The agent left memory: prune what its last writes left beyond `keep`."""
        if head.version > max(head.pruned_at, self.keep):
            self.prune(agent_id, head)

    def close(self) -> None:
        """At shutdown: no more prunes (the next activation's writes prune)."""
        self.closing = True

    def prune(self, agent_id: str, head: HeadVersions) -> None:
        """Drop old versions of the agent's object in the background, one prune per agent at a time."""
        if self.closing or not isinstance(self.store, VersionPruning) or head.version <= self.keep:
            return
        if head.pruning:
            head.again = True
            return
        head.pruning = True
        self._spawn(self._prune(agent_id, head), f"prune:{self._what}:{agent_id[:8]}")

    async def _prune(self, agent_id: str, head: HeadVersions) -> None:
        assert isinstance(self.store, VersionPruning)
        try:
            while True:
                head.again = False
                keep_from = head.version
                try:
                    removed = await self.store.prune(self._key(agent_id), self.keep)
                except HeroError as exc:  # a backend down: the next prune tries again
                    log.warning("agent %s: old versions of its %s not pruned: %s", agent_id[:12], self._what,
                                exc.message)
                    return
                head.pruned_at = keep_from
                if removed:
                    log.debug("agent %s: %d old versions of its %s pruned", agent_id[:12], removed, self._what)
                if not head.again:
                    return
        finally:
            head.pruning = False
