"""Signed, expiring agent → node records: how the overlay finds the node hosting an agent.

The hosting node signs (agent id, its own X25519 key, issued, expires) with
XEdDSA and floods the record to its neighbours, who keep the newest unexpired
record per agent and pass on only records that are new to them. When an agent
moves, its new node publishes a newer record and the old one loses.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from hero.net.address import Identity, verify

_BODY = struct.Struct(">32s32sQQ")
SIGNED_PREFIX = b"hero-agent-record-v1\0"
RECORD_BYTES = _BODY.size + 64
MAX_RECORDS = 100_000


class RecordError(ValueError):
    pass


@dataclass(frozen=True)
class AgentRecord:
    agent: bytes  # the agent id (its owner's Ed25519 public key)
    node: bytes  # the hosting node's X25519 public key
    issued_ms: int
    expires_ms: int
    signature: bytes

    @classmethod
    def issue(cls, identity: Identity, agent: bytes, ttl_s: float, *, now: float | None = None) -> AgentRecord:
        issued = int((time.time() if now is None else now) * 1000)
        expires = issued + int(ttl_s * 1000)
        body = _BODY.pack(agent, identity.public, issued, expires)
        return cls(agent, identity.public, issued, expires, identity.sign(SIGNED_PREFIX + body))

    def encode(self) -> bytes:
        return _BODY.pack(self.agent, self.node, self.issued_ms, self.expires_ms) + self.signature

    @classmethod
    def decode(cls, raw: bytes) -> AgentRecord:
        """Parse and check the signature; raises RecordError."""
        if len(raw) != RECORD_BYTES:
            raise RecordError(f"agent record must be {RECORD_BYTES} bytes")
        agent, node, issued, expires = _BODY.unpack_from(raw)
        record = cls(agent, node, issued, expires, raw[_BODY.size :])
        if expires <= issued:
            raise RecordError("agent record expires before it was issued")
        if not verify(node, SIGNED_PREFIX + raw[: _BODY.size], record.signature):
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
