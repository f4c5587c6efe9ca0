"""The web ↔ users seam: who may talk to this node, their tokens and sign-in challenges (`hero.users.Registry`)."""

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

    async def authenticate(self, token: str) -> TokenClaims:
        """Signature, expiry and revocation: the one check every API request passes. Raises Unauthorized.
        (It may read the registry from the store: a user added on another node, or by `hero user add`.)"""
        ...

    def list(self) -> list[User]: ...

    def by_agent(self, agent_id: str) -> User | None: ...

    def issue(self, user: User) -> tuple[str, TokenClaims]:
        """A user token for `user` (its subject is their agent id)."""
        ...

    def revoke_token(self, jti: str, expires: float | None = None) -> None:
        """Revoke one token now on this node; in the store (so on every node) once `flush` returns."""
        ...

    async def flush(self) -> None:
        """Wait until every change made with the synchronous calls is in the store."""
        ...

    async def spend_nonce(self, nonce: str, expires: float) -> bool:
        """Mark a sign-in challenge's nonce used (on every node); False if it already was (a replay)."""
        ...
