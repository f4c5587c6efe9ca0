"""The web ↔ users seam: who may talk to this node, their tokens and sign-in challenges (`hero.users.Users`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hero.identity import NodeKeys, TokenClaims


@dataclass(frozen=True)
class User:
    name: str
    agent_id: str
    created: float
    revoked: bool

    def to_json(self) -> dict:
        return {"name": self.name, "agent_id": self.agent_id, "created": self.created, "revoked": self.revoked}


class UserRegistry(Protocol):
    @property
    def keys(self) -> NodeKeys:
        """The node's keys: they sign tokens and sign-in challenges."""
        ...

    def authenticate(self, token: str) -> TokenClaims:
        """Signature, expiry and revocation: the one check every API request passes. Raises Unauthorized."""
        ...

    def list(self) -> list[User]: ...

    def by_agent(self, agent_id: str) -> User | None: ...

    def issue(self, user: User) -> tuple[str, TokenClaims]:
        """A user token for `user` (its subject is their agent id)."""
        ...

    def revoke_token(self, jti: str) -> None: ...

    def spend_nonce(self, nonce: str, expires: float) -> bool:
        """Mark a sign-in challenge's nonce used; False if it already was (a replay)."""
        ...
