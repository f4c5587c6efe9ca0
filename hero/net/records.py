"""Signed, expiring agent → node records, authorised by the agent's owner: how the overlay finds an agent's node.

A node may claim to host an agent only with its owner's say-so. The owner (whose
Ed25519 public key *is* the agent id) signs a grant naming a hosting authority:
a lone node's own Ed25519 key, or the key of the cluster whose nodes may host
it. The authority vouches for each record (agent id, the hosting node's X25519
key, issued, expires) with its signature, and the record carries the owner's
grant: a receiver checks both, so a node that holds neither the grant nor the
authority's key cannot take an agent's messages. Records flood to the
neighbours, who keep the newest unexpired record per agent and pass on only
records that are new to them; when an agent moves, its new node publishes a
newer record and the old one loses.

The grant: the owner signs `GRANT_PREFIX + agent id (32 bytes) + authority (32 bytes)`; `hero user add` signs
it when it makes the user's key, and `hero user grant` takes one signed elsewhere.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import nacl.signing

from hero.identity import verify_signature

_BODY = struct.Struct(">32s32sQQ32s")  # agent, node (X25519), issued ms, expires ms, authority (Ed25519)
SIGNED_PREFIX = b"hero-agent-record-v2\0"
GRANT_PREFIX = b"hero-host-grant-v1\0"
SIG_BYTES = 64
RECORD_BYTES = _BODY.size + 2 * SIG_BYTES
MAX_RECORDS = 100_000


class RecordError(ValueError):
    """A record that is malformed, expired or not signed by whom it claims."""


def grant_message(agent: bytes, authority: bytes) -> bytes:
    """What an agent's owner signs to let `authority` (an Ed25519 public key) host the agent."""
    return GRANT_PREFIX + agent + authority


def sign_grant(owner: nacl.signing.SigningKey, authority: bytes) -> bytes:
    """The owner's grant (64 bytes) for their agent to be hosted under `authority`."""
    return owner.sign(grant_message(owner.verify_key.encode(), authority)).signature


def check_grant(agent: bytes, authority: bytes, grant: bytes) -> bool:
    return len(grant) == SIG_BYTES and verify_signature(agent.hex(), grant_message(agent, authority), grant)


class HostAuthority:
    """Who vouches that a node hosts agents: the cluster's signing key, or a lone node's own."""

    def __init__(self, signing: nacl.signing.SigningKey) -> None:
        self._signing = signing
        self.public = signing.verify_key.encode()

    def vouch(self, body: bytes) -> bytes:
        return self._signing.sign(SIGNED_PREFIX + body).signature


@dataclass(frozen=True)
class AgentRecord:
    agent: bytes  # the agent id (its owner's Ed25519 public key)
    node: bytes  # the hosting node's X25519 public key
    issued_ms: int
    expires_ms: int
    authority: bytes  # the Ed25519 key the owner granted hosting to
    grant: bytes  # the owner's signature of the grant
    vouch: bytes  # the authority's signature of the record

    @classmethod
    def issue(cls, node: bytes, authority: HostAuthority, agent: bytes, grant: bytes, ttl_s: float, *,
              now: float | None = None) -> AgentRecord:
        issued = int((time.time() if now is None else now) * 1000)
        expires = issued + int(ttl_s * 1000)
        body = _BODY.pack(agent, node, issued, expires, authority.public)
        return cls(agent, node, issued, expires, authority.public, grant, authority.vouch(body))

    def encode(self) -> bytes:
        body = _BODY.pack(self.agent, self.node, self.issued_ms, self.expires_ms, self.authority)
        return body + self.grant + self.vouch

    @classmethod
    def decode(cls, raw: bytes) -> AgentRecord:
        """Parse and check the owner's grant and the authority's signature; raises RecordError."""
        if len(raw) != RECORD_BYTES:
            raise RecordError(f"agent record must be {RECORD_BYTES} bytes")
        agent, node, issued, expires, authority = _BODY.unpack_from(raw)
        grant, vouch = raw[_BODY.size : _BODY.size + SIG_BYTES], raw[_BODY.size + SIG_BYTES :]
        record = cls(agent, node, issued, expires, authority, grant, vouch)
        if expires <= issued:
            raise RecordError("agent record expires before it was issued")
        if not check_grant(agent, authority, grant):
            raise RecordError("agent record carries no grant from the agent's owner to its authority")
        if not verify_signature(authority.hex(), SIGNED_PREFIX + raw[: _BODY.size], vouch):
            raise RecordError("agent record signature does not verify")
        return record

    def expired(self, now: float | None = None) -> bool:
        return self.expires_ms <= int((time.time() if now is None else now) * 1000)


class AgentDirectory:
    """The newest unexpired record per agent."""

    def __init__(self) -> None:
        self._records: dict[bytes, AgentRecord] = {}
        self.rejected = 0

    def learn(self, raw: bytes) -> AgentRecord | None:
        """A record from a neighbour: returned if it is new to us (flood it on), else None."""
        try:
            record = AgentRecord.decode(raw)
        except RecordError:
            self.rejected += 1
            return None
        return record if self.add(record) else None

    def add(self, record: AgentRecord) -> bool:
        if record.expired():
            return False
        known = self._records.get(record.agent)
        if known is not None and not known.expired() and known.issued_ms >= record.issued_ms:
            return False
        if known is None and len(self._records) >= MAX_RECORDS:
            self.prune()
            if len(self._records) >= MAX_RECORDS:
                return False
        self._records[record.agent] = record
        return True

    def resolve(self, agent: bytes) -> bytes | None:
        record = self._records.get(agent)
        if record is None or record.expired():
            return None
        return record.node

    def records(self) -> list[AgentRecord]:
        return [r for r in self._records.values() if not r.expired()]

    def prune(self) -> None:
        now = time.time()
        self._records = {a: r for a, r in self._records.items() if not r.expired(now)}

    def __len__(self) -> int:
        return len(self._records)
