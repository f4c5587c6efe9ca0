"""`hero storage migrate`: every agent still in the single-object layout gets its history cut into segments.

The same cut an agent makes on its first activation (`segments.migrate`), done for
every stored agent at once, e.g. before an upgrade is rolled out. Each agent's
segments are written put-if-absent (bytes that are already there and equal are
kept), then its head with a compare-and-set on the version that was read: an
agent a running node wrote meanwhile is left to that node (it migrates it
itself), and a migration cut short is finished by running it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hero.chat.segments import SLOT, migrate
from hero.errors import Conflict, HeroError, StaleEpoch
from hero.runtime.keys import STATE, agent_key, parse_key, state_key
from hero.runtime.state import decode_state, encode_state
from hero.seams.store import StateStore

log = logging.getLogger("hero.chat")


@dataclass
class MigrationReport:
    migrated: list[str] = field(default_factory=list)
    segments_written: int = 0
    already: int = 0  # agents already in the segment layout (or with no history)
    skipped: dict[str, str] = field(default_factory=dict)  # agent id -> why (written meanwhile, unreadable)

    def to_json(self) -> dict[str, Any]:
        return {"migrated": self.migrated, "segments_written": self.segments_written, "already": self.already,
                "skipped": self.skipped}


async def migrate_agent(store: StateStore, agent_id: str, report: MigrationReport) -> None:
    key = state_key(agent_id)
    found = await store.latest(key)
    if found is None:
        return
    version, raw = found
    state, _ = decode_state(raw)
    history = state.get(SLOT)
    if not isinstance(history, list):
        report.already += 1
        return
    head, seals = migrate(history)
    for name, data in seals:
        try:
            await store.put(agent_key(agent_id, name), data, epoch=version.epoch, expect=0)
            report.segments_written += 1
        except Conflict:
            if await store.get(agent_key(agent_id, name)) != data:
                raise ValueError(f"{name} holds other bytes than this migration writes") from None
    state[SLOT] = head
    await store.put(key, encode_state(state), epoch=version.epoch, expect=version.version)
    report.migrated.append(agent_id)


async def migrate_all(store: StateStore) -> MigrationReport:
    """Migrate every stored agent; one that cannot be migrated is named in `skipped` and the others go on."""
    report = MigrationReport()
    for key in await store.keys("agent/"):
        parsed = parse_key(key)
        if parsed is None or parsed.name != STATE:
            continue
        try:
            await migrate_agent(store, parsed.agent_id, report)
        except (Conflict, StaleEpoch):
            report.skipped[parsed.agent_id] = "written meanwhile by a running node (it migrates it on activation)"
        except (HeroError, ValueError) as exc:
            reason = exc.message if isinstance(exc, HeroError) else str(exc)
            log.warning("agent %s not migrated: %s", parsed.agent_id[:12], reason)
            report.skipped[parsed.agent_id] = reason
    return report
