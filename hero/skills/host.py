"""The node's skills as agents use them: which skills an agent runs (its verified spec) and the services they get.

`SkillHost` is node-wide (built by the server, handed to agents through their
context's services as `skills`, and to the runtime as its spec verifier). Before
an agent is activated it reads the agent's latest accepted spec from the store and
checks its signatures against the node's policy (`verify`), so no skill of a spec
that does not verify ever runs. An agent with no spec yet gets the node's default
one (every skill the node has), signed by the node's key and recorded; such a
node-made spec follows the node's skills when they change (a new version is
recorded), while a spec someone signed is never changed by the node: a skill whose hash no longer
matches it is not run, and `/help` says so.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nacl.signing

from hero.config import NodeConfig
from hero.errors import SpecRefused, UsageError
from hero.identity import NodeKeys
from hero.seams.store import StateStore
from hero.skills.context import SkillServices
from hero.skills.registry import SkillRegistry, shipped_dir
from hero.skills.skill import Skill
from hero.skills.spec import AgentSpec, SkillRef, SpecLog, SpecPolicy, new_spec
from hero.skills.trust import HERO_KEY, TrustStore

log = logging.getLogger("hero.skills")
AUTO = "node_default"  # the limits flag of a spec the node made on its own


@dataclass
class Resolved:
    """An agent's skills for one turn: the spec's skills this node runs, and those it does not (with why)."""

    spec: AgentSpec
    skills: list[Skill] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


class SkillHost:
    def __init__(
        self,
        registry: SkillRegistry,
        specs: SpecLog | None,
        services: SkillServices,
        *,
        node_key: nacl.signing.SigningKey | None = None,
    ) -> None:
        self.registry = registry
        self.specs = specs
        self.services = services
        self._node_key = node_key
        self._cache: dict[str, AgentSpec] = {}  # agent id -> its latest spec, verified

    def refs(self) -> list[SkillRef]:
        return [SkillRef(s.name, s.version, s.hash) for s in sorted(self.registry.skills().values(),
                                                                     key=lambda s: s.name)]

    async def spec(self, agent_id: str, *, fresh: bool = False) -> AgentSpec:
        """The agent's spec, verified; the node's default one, made and recorded, if it has none. `fresh` reads
        the store again (at each activation: a spec accepted meanwhile, e.g. by `hero agent spec`, takes effect)."""
        cached = None if fresh else self._cache.get(agent_id)
        refs = self.refs()
        if cached is not None and (not cached.limits.get(AUTO) or list(cached.skills) == refs):
            return cached
        current = await self.specs.current(agent_id) if self.specs is not None else cached
        if current is None or (current.limits.get(AUTO) and list(current.skills) != refs):
            current = await self._make_default(agent_id, current, refs)
        self._cache[agent_id] = current
        return current

    async def verify(self, agent_id: str) -> None:
        """The runtime asks at each activation: the spec is read again (one accepted meanwhile, e.g. by `hero
        agent spec`, takes effect) and checked; `SpecRefused` naming the reason if it does not verify."""
        await self.spec(agent_id, fresh=True)

    async def _make_default(self, agent_id: str, previous: AgentSpec | None, refs: list[SkillRef]) -> AgentSpec:
        spec = new_spec(agent_id, refs, previous=previous, limits={AUTO: True})
        if self._node_key is None:
            return spec  # no store and no key (an ephemeral test agent): nothing to sign or record
        spec = spec.signed(self._node_key)
        if self.specs is not None:
            spec = await self.specs.accept(spec)
            log.info("agent %s: node default spec %d recorded (%d skills)", agent_id[:12], spec.seq, len(refs))
        return spec

    async def aclose(self) -> None:
        self.services.runner.close()
        if self.services.http is not None:
            await self.services.http.aclose()

    def forget(self, agent_id: str) -> None:
        """Read the agent's spec from the store again next time (a new one was accepted)."""
        self._cache.pop(agent_id, None)

    async def accept(self, spec: AgentSpec) -> AgentSpec:
        if self.specs is None:
            raise SpecRefused("this node keeps no spec log")
        accepted = await self.specs.accept(spec)
        self._cache[spec.agent_id] = accepted
        return accepted

    async def resolve(self, agent_id: str, *, fresh: bool = False) -> Resolved:
        """The skills the agent's spec enables that this node has with the same hash (dev skills: same name)."""
        spec = await self.spec(agent_id, fresh=fresh)
        loaded = self.registry.skills()
        out = Resolved(spec)
        for ref in spec.skills:
            skill = loaded.get(ref.name)
            if skill is None:
                out.missing[ref.name] = "this node does not have it"
            elif skill.hash != ref.hash and skill.source != "dev":
                out.missing[ref.name] = (f"the spec names version {ref.version} ({ref.hash[:12]}…), the node has "
                                         f"{skill.version} ({skill.hash[:12]}…)")
            else:
                out.skills.append(skill)
        return out


@functools.cache
def shipped_host() -> SkillHost:
    """The shipped skills with no spec log and no services: for agents of a node built without a skill host (tests
    and benches that make a runtime alone). Built once per process, then only read."""
    registry = SkillRegistry(trusted=lambda: {HERO_KEY}, shipped=shipped_dir(), entry_points=False)
    registry.load()
    return SkillHost(registry, None, SkillServices())


def node_host(config: NodeConfig, keys: NodeKeys, store: StateStore, power: Any) -> SkillHost:
    """The node's skill host: the skills it loads (shipped, installed packages, `DATA/skills/`, dev folders), its
    agents' spec log in the store, and the services skills may use (power reports, the ledger, outbound HTTP)."""
    dev = [Path(p) for p in config.dev_skills.split()]
    for path in dev:
        if not path.is_dir():
            raise UsageError(f"--dev-skills {path}: not a folder")
    trust = TrustStore(config.data_dir)
    registry = SkillRegistry(trusted=trust.keys, shipped=shipped_dir(), folders=[config.data_dir / "skills"], dev=dev)
    registry.load()
    policy = SpecPolicy(keys.node_id, frozenset(config.spec_signers.split()), config.spec_threshold)
    services = SkillServices(power=power, metering=power,
                             http=httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(10.0)))
    return SkillHost(registry, SpecLog(store, policy), services, node_key=keys.signing)
