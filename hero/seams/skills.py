"""The skills seam the runtime asks before it activates an agent: does the agent's spec verify?

An agent's spec (its skills with their hashes, model, limits) is a signed
document; the node runs an agent only if its latest spec is signed as the node's
policy requires and its history is unbroken. The runtime asks before it builds
the agent, so no code of a skill an unverified spec names ever runs for it.
`hero.skills.host.SkillHost` implements it.
"""

from __future__ import annotations

from typing import Protocol


class SpecVerifier(Protocol):
    async def verify(self, agent_id: str) -> None:
        """Return if the agent may run; raise `SpecRefused` naming the reason if its spec does not verify."""
        ...
