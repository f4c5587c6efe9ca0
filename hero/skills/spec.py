"""An agent's spec: the signed document that says what the agent runs (skills with versions and hashes, model,
limits), checked before the agent runs a skill, recorded append-only.

The spec is canonical JSON (sorted keys, no spaces); its signatures cover that
text. Who may sign an agent's spec, and how many must, is the node's policy:
the node's own key, the agent's owner (the agent id is their public key) and any
keys in `spec_signers`, `spec_threshold` of them (k-of-n: multi-party
authorisation). Every accepted spec is a new object `spec/<agent>/<seq>` in the
store, written once and naming the hash of the one before it, so the history is
append-only and a changed or missing entry is detected when it is read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import blake3
import nacl.signing

from hero.errors import SpecRefused
from hero.identity import verify_signature
from hero.seams.store import StateStore

DOMAIN = b"hero-agent-spec-v1\n"
PREFIX = "spec/"


@dataclass(frozen=True)
class SkillRef:
    name: str
    version: str
    hash: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "hash": self.hash}


@dataclass(frozen=True)
class AgentSpec:
    agent_id: str
    seq: int
    skills: tuple[SkillRef, ...]
    model: str = "default"
    limits: dict[str, Any] = field(default_factory=dict)
    previous: str = ""  # the hash of the spec this one follows ("" for the first)
    created: float = 0.0
    signatures: tuple[tuple[str, str], ...] = ()  # (key hex, signature hex)

    def body(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id, "seq": self.seq, "skills": [s.to_json() for s in self.skills],
            "model": self.model, "limits": self.limits, "previous": self.previous, "created": self.created,
        }

    def canonical(self) -> bytes:
        return json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return blake3.blake3(self.canonical()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.digest(),
                "signatures": [{"key": k, "signature": s} for k, s in self.signatures]}

    def signed(self, key: nacl.signing.SigningKey) -> AgentSpec:
        """This spec with one more signature (a key signs once)."""
        public = key.verify_key.encode().hex()
        signature = key.sign(DOMAIN + self.canonical()).signature.hex()
        kept = tuple((k, s) for k, s in self.signatures if k != public)
        return replace(self, signatures=(*kept, (public, signature)))

    def signers(self) -> set[str]:
        """The keys whose signatures verify over this exact document."""
        message = DOMAIN + self.canonical()
        good = set()
        for key, signature in self.signatures:
            try:
                raw = bytes.fromhex(signature)
            except ValueError:
                continue
            if verify_signature(key, message, raw):
                good.add(key)
        return good


def spec_from_json(raw: object) -> AgentSpec:
    """A spec as written by `to_json`; `SpecRefused` naming the field that is wrong."""
    if not isinstance(raw, dict):
        raise SpecRefused("a spec is a JSON object")
    try:
        skills = tuple(SkillRef(str(s["name"]), str(s["version"]), str(s["hash"])) for s in raw["skills"])
        signatures = tuple((str(s["key"]), str(s["signature"])) for s in raw.get("signatures", []))
        limits = raw.get("limits", {})
        if not isinstance(limits, dict):
            raise TypeError("limits must be an object")
        return AgentSpec(str(raw["agent_id"]), int(raw["seq"]), skills, str(raw.get("model", "default")), limits,
                         str(raw.get("previous", "")), float(raw.get("created", 0.0)), signatures)
    except KeyError as exc:
        raise SpecRefused(f"the spec has no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise SpecRefused(f"the spec is malformed: {exc}") from None


@dataclass(frozen=True)
class SpecPolicy:
    """Who may sign which agent's spec, and how many of them must."""

    node_key: str
    extra_signers: frozenset[str] = frozenset()
    threshold: int = 1

    def signers_for(self, agent_id: str) -> set[str]:
        return {self.node_key, agent_id, *self.extra_signers}

    def check(self, spec: AgentSpec) -> set[str]:
        """The allowed keys that signed `spec`; `SpecRefused` if fewer than the threshold did."""
        allowed = self.signers_for(spec.agent_id)
        good = spec.signers() & allowed
        if len(good) < self.threshold:
            bad = {k for k, _ in spec.signatures} - spec.signers()
            said = f"; {len(bad)} signature(s) do not verify" if bad else ""
            raise SpecRefused(
                f"agent {spec.agent_id[:16]}…: spec {spec.seq} has {len(good)} valid signature(s) from allowed "
                f"keys, {self.threshold} needed (the node's key, the owner's, or spec_signers){said}")
        return good


def spec_key(agent_id: str, seq: int) -> str:
    return f"{PREFIX}{agent_id}/{seq:08d}"


def new_spec(agent_id: str, skills: Iterable[SkillRef], *, previous: AgentSpec | None = None, model: str = "default",
             limits: dict[str, Any] | None = None) -> AgentSpec:
    return AgentSpec(agent_id, (previous.seq + 1) if previous else 1, tuple(skills), model, dict(limits or {}),
                     previous.digest() if previous else "", round(time.time(), 3))


class SpecLog:
    """Every accepted spec of every agent, in the store: append-only, each naming the one before."""

    def __init__(self, store: StateStore, policy: SpecPolicy) -> None:
        self.store = store
        self.policy = policy
        self._read: dict[str, AgentSpec] = {}  # entries are written once: each is read once

    async def _entry(self, key: str, agent_id: str) -> AgentSpec:
        spec = self._read.get(key)
        if spec is None:
            try:
                spec = spec_from_json(json.loads(await self.store.get(key)))
            except ValueError:
                raise SpecRefused(f"agent {agent_id[:16]}…: {key} is not JSON: the spec history is damaged") from None
            self._read[key] = spec
        return spec

    async def history(self, agent_id: str) -> list[AgentSpec]:
        """The agent's accepted specs, oldest first; `SpecRefused` if the chain is broken (an entry changed,
        removed, or not signed as it was when accepted)."""
        keys = sorted(await self.store.keys(f"{PREFIX}{agent_id}/"))
        out: list[AgentSpec] = []
        for key in keys:
            spec = await self._entry(key, agent_id)
            expected_previous = out[-1].digest() if out else ""
            if spec.seq != len(out) + 1 or spec.previous != expected_previous or spec.agent_id != agent_id:
                raise SpecRefused(f"agent {agent_id[:16]}…: {key} does not follow spec {len(out)}: the spec "
                                  "history was changed")
            out.append(spec)
        return out

    async def current(self, agent_id: str) -> AgentSpec | None:
        """The agent's latest spec, verified against the node's policy; None if it has none yet."""
        history = await self.history(agent_id)
        if not history:
            return None
        self.policy.check(history[-1])
        return history[-1]

    async def accept(self, spec: AgentSpec) -> AgentSpec:
        """Record `spec` if it is signed as the policy requires and follows the agent's latest spec."""
        self.policy.check(spec)
        history = await self.history(spec.agent_id)
        latest = history[-1] if history else None
        if spec.seq != (latest.seq + 1 if latest else 1) or spec.previous != (latest.digest() if latest else ""):
            raise SpecRefused(f"agent {spec.agent_id[:16]}…: spec {spec.seq} does not follow the latest accepted "
                              f"spec ({latest.seq if latest else 0}); make it from that one")
        body = json.dumps(spec.to_json(), sort_keys=True).encode()
        await self.store.put(spec_key(spec.agent_id, spec.seq), body, epoch=0)
        return spec
