"""A user's data is theirs: what their export carries besides the history, and deleting every trace of them.

Deletion goes in an order that leaves nothing half-alive: the user is revoked first (every token of theirs
fails, and the overlay stops delivering to their agent), the agent leaves the node (nothing of it is written
from then on), every object under its prefix is purged from every backend (every version, every fragment),
then the user's record goes and the power part forgets the agent. A backend that did not answer keeps what
it holds until it answers again: the store records what it missed and purges it there then (`pending`
in the answer, and in `hero storage status`), so the deletion is complete for the user at once and on
every backend as soon as each is back. A store that cannot record that refuses (StorageError), and
running the deletion again (`hero user delete NAME --purge`, the user being revoked already) finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hero.errors import StorageError, Unavailable
from hero.runtime.keys import PREFIX
from hero.seams.node import AgentRemoval
from hero.seams.power import PowerReports
from hero.seams.store import Purging
from hero.skills.context import SLOT
from hero.users import Registry

log = logging.getLogger("hero.users")
MEMORY = "memory"  # facts an agent kept before skills existed (moved into the notes skill on its next turn)


def agent_prefix(agent_id: str) -> str:
    """Every store key of one agent starts with this."""
    return f"{PREFIX}{agent_id}/"


def skill_state_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an agent's state that are its skills' (and its old memory): not its history."""
    out: dict[str, Any] = {"skills": state.get(SLOT, {})}
    if MEMORY in state:
        out[MEMORY] = state[MEMORY]
    return out


async def purge_agent(store: object, agent_id: str) -> dict[str, Any]:
    """Every object of the agent, gone from every backend or recorded to go when a missed backend is back
    (`pending`); StorageError if a backend kept something the store will not purge by itself."""
    if not isinstance(store, Purging):
        raise Unavailable("this node's store cannot delete for good")
    report = await store.purge(agent_prefix(agent_id))
    if report.kept:
        raise StorageError(f"the agent's data is not yet deleted everywhere: {'; '.join(report.left[:3])}; "
                           "run the deletion again once every backend answers")
    return report.to_json()


class UserData:
    def __init__(self, users: Registry, store: Purging, node: AgentRemoval, power: PowerReports | None) -> None:
        self.users = users
        self.store = store
        self.node = node
        self.power = power

    async def skill_state(self, agent_id: str) -> dict[str, Any]:
        return skill_state_of(await self.node.read_state(agent_id))

    async def delete(self, agent_id: str) -> dict[str, Any]:
        user = await self.users.revoke_agent(agent_id)
        await self.node.forget(agent_id)
        purged = await purge_agent(self.store, agent_id)
        await self.users.delete_user(agent_id)
        if self.power is not None:
            await self.power.forget(agent_id)
        log.warning("a user deleted their agent %s… and its data (%d objects purged)", agent_id[:12],
                    purged["objects"])
        return {"deleted": user.name, "agent_id": agent_id, "store": purged}
