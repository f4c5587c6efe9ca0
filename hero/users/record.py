"""A user as the registry stores them (`users/<agent id>`), and the names of the registry's objects."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace

from hero.identity import check_agent_id
from hero.seams.users import User

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
USER_TTL = 30 * 86400.0
USERS = "users/"
REVOKED = "auth/revoked"
NONCES = "auth/nonces"
AUTH = "auth"  # the subject of a change to `auth/revoked` or `auth/nonces`
LEGACY_REVOKED_TTL_S = 365 * 86400.0  # users.db kept no expiry for revoked tokens: keep them a year


@dataclass(frozen=True)
class Record:
    """One user as the registry stores them."""

    name: str
    agent_id: str
    created: float
    revoked_at: float | None = None
    grant: str | None = None  # hex: the owner's signature letting this registry's authority host their agent
    home: str | None = None  # the node (id or name) the agent is pinned to, if any

    @property
    def user(self) -> User:
        return User(self.name, self.agent_id, self.created, self.revoked_at is not None)

    def merged(self, other: Record) -> Record:
        """Both records' facts: the first name and time, the earliest revocation, a grant if either has one."""
        first = self if self.created <= other.created else other
        revoked = [t for t in (self.revoked_at, other.revoked_at) if t is not None]
        return replace(first, revoked_at=min(revoked) if revoked else None, grant=other.grant or self.grant,
                       home=other.home if other.home is not None else self.home)

    @classmethod
    def parse(cls, raw: bytes) -> Record:
        data = json.loads(raw)
        return cls(str(data["name"]), check_agent_id(str(data["agent_id"])), float(data["created"]),
                   None if data.get("revoked_at") is None else float(data["revoked_at"]),
                   data.get("grant"), data.get("home"))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()


def user_key(agent_id: str) -> str:
    return f"{USERS}{agent_id}"
