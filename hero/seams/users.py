"""The web ↔ users seam: who may talk to this node, their tokens and sign-in challenges (`hero.users.Registry`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


class UserData(Protocol):
    """The user's data is theirs: what an export carries besides the history, and deleting all of it
    (`hero.users_data.UserData`)."""

    async def skill_state(self, agent_id: str) -> dict[str, Any]:
        """The agent's skills' state (the notes skill's notes among it) and any memory kept outside skills."""
        ...

    async def delete(self, agent_id: str) -> dict[str, Any]:
        """Every object of the agent on every backend, the user and their tokens, the agent from memory, its
        timers and its power figures; what was removed (`store`, a purge's report: `store.pending` when a
        backend that did not answer is purged later by the store). Raises StorageError if something may
        remain that nothing will delete."""
        ...
