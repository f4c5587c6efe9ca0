"""The user registry: who may talk to this node, and which tokens are revoked.

Kept in SQLite (WAL) in the data dir so the `hero user` CLI and a running
node share it safely: a revocation takes effect on the node's next request.
The node never holds a user's private key.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from hero.errors import Conflict, NotFound, Unauthorized, UsageError
from hero.identity import NodeKeys, TokenClaims, check_agent_id
from hero.seams.users import User

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
USER_TTL = 30 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    agent_id TEXT UNIQUE NOT NULL,
    created REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS revoked_tokens (jti TEXT PRIMARY KEY, revoked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS used_nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
"""


class Users:
    """The registry in `DATA/users.db` (the `UserRegistry` seam the web reads)."""

    def __init__(self, data_dir: Path, keys: NodeKeys) -> None:
        self.keys = keys
        path = Path(data_dir) / "users.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, name: str, agent_id: str) -> User:
        if not NAME.match(name):
            raise UsageError(f"invalid user name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
        check_agent_id(agent_id)
        user = User(name, agent_id, time.time(), False)
        try:
            self._db.execute("INSERT INTO users VALUES (?, ?, ?, NULL)", (name, agent_id, user.created))
        except sqlite3.IntegrityError:
            raise Conflict(f"user {name!r} or that key already exists") from None
        return user

    def get(self, name: str) -> User:
        row = self._db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no user {name!r}")
        return User(row[0], row[1], row[2], row[3] is not None)

    def by_agent(self, agent_id: str) -> User | None:
        row = self._db.execute("SELECT * FROM users WHERE agent_id = ?", (agent_id,)).fetchone()
        return None if row is None else User(row[0], row[1], row[2], row[3] is not None)

    def list(self) -> list[User]:
        rows = self._db.execute("SELECT * FROM users ORDER BY created").fetchall()
        return [User(r[0], r[1], r[2], r[3] is not None) for r in rows]

    def revoke(self, name: str) -> User:
        """Revoke the user: every token they hold stops working at once."""
        user = self.get(name)
        self._db.execute("UPDATE users SET revoked_at = ? WHERE name = ?", (time.time(), name))
        return User(user.name, user.agent_id, user.created, True)

    def revoke_token(self, jti: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO revoked_tokens VALUES (?, ?)", (jti, time.time()))

    def spend_nonce(self, nonce: str, expires: float) -> bool:
        """Mark a login challenge's nonce used; False if it already was (a replay). Kept on disk until the
        challenge expires, so a captured answer does not work again after a restart either."""
        self._db.execute("DELETE FROM used_nonces WHERE expires < ?", (time.time(),))
        try:
            self._db.execute("INSERT INTO used_nonces VALUES (?, ?)", (nonce, expires))
        except sqlite3.IntegrityError:
            return False
        return True

    def issue(self, user: User, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub=user.agent_id, name=user.name, role="user", ttl=ttl)

    def issue_operator(self, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub="operator", name="operator", role="operator", ttl=ttl)

    def authenticate(self, token: str) -> TokenClaims:
        """Signature, expiry and revocation: the one check every API request passes."""
        claims = self.keys.verify_token(token)
        if self._db.execute("SELECT 1 FROM revoked_tokens WHERE jti = ?", (claims.jti,)).fetchone():
            raise Unauthorized("token revoked")
        if claims.role == "user":
            user = self.by_agent(claims.sub)
            if user is None or user.revoked:
                raise Unauthorized("user revoked or unknown")
        elif claims.role != "operator":
            raise Unauthorized("invalid token role")
        return claims
