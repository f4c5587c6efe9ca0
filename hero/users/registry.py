"""`Registry`: the user registry as a node holds it, in memory (checking a token costs no I/O), written through
to the store (`stored.py`) and told of changes made elsewhere (`refresh`, `catch_up`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from hero.errors import Conflict, HeroError, NotFound, StorageError, Unauthorized, UsageError
from hero.identity import NodeKeys, TokenClaims, UserKey, check_agent_id
from hero.net.records import check_grant, sign_grant
from hero.nursery import Nursery
from hero.seams.store import StateStore
from hero.seams.users import User
from hero.users.changes import ChangeLog
from hero.users.record import AUTH, LEGACY_REVOKED_TTL_S, NAME, NONCES, REVOKED, USER_TTL, Record, user_key
from hero.users.stored import UserStore, read_legacy, retire_legacy

log = logging.getLogger("hero.users")

LOAD_CONCURRENCY = 16


class Registry:
    """The registry as a node holds it: in memory, written through to the store."""

    def __init__(self, store: StateStore, keys: NodeKeys, *, data_dir: Path | None = None,
                 note_changes: bool = False) -> None:
        self.keys = keys  # they sign tokens and sign-in challenges (the cluster's, in a cluster)
        self.authority = keys.signing.verify_key.encode()  # what owners grant hosting to
        self.store = store
        self.stored = UserStore(store)
        self.data_dir = data_dir
        self.changes = ChangeLog(data_dir) if data_dir is not None else None
        self.note_changes = note_changes  # a tool's registry: tell a node running on this data dir
        self.on_change: Callable[[str], Coroutine[Any, Any, None]] | None = None  # the cluster's broadcast
        self.spend_shared: Callable[[str, float], Awaitable[bool]] | None = None  # the cluster's nonce check
        self._records: dict[str, Record] = {}
        self._names: dict[str, str] = {}
        self._revoked: dict[str, float] = {}
        self._nonces: dict[str, float] = {}
        self._writes = Nursery("users")
        self._auth_stale = False  # another process revoked a token: read `auth/revoked` before the next check

    # loading and hearing of changes

    async def load(self) -> None:
        """Read the whole registry (moving an old `users.db` in first)."""
        await self._migrate()
        if self.changes is not None:
            self.changes.skip()
        gate = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def read(agent_id: str) -> None:
            async with gate:
                try:
                    await self.refresh(agent_id)
                except StorageError as exc:  # costs that user (their tokens fail), never the node's start
                    log.error("user record %s cannot be read; that user cannot sign in while it cannot (see "
                              "`hero storage status`): %s", user_key(agent_id), exc.message)

        await asyncio.gather(*(read(a) for a in await self.stored.agent_ids()))
        await self.refresh(AUTH)

    async def refresh(self, subject: str) -> None:
        """Read one user (by agent id), or the revoked tokens and nonces (`auth`), again from the store."""
        if subject == AUTH:
            self._revoked.update((await self.stored.read_map(REVOKED))[1])
            self._nonces.update((await self.stored.read_map(NONCES))[1])
            return
        record = await self.stored.read_user(check_agent_id(subject))
        if record is not None:
            self._apply(record)
        elif (known := self._records.get(subject)) is not None and known.revoked_at is not None:
            self._drop(subject)  # deleted (a deletion revokes first); a new user's first write may still be on its way

    def catch_up(self) -> None:
        """Apply what another process on this data dir changed (`DATA/users.changed` grew): one stat when
        nothing did. Each line is a changed user's record, or `{"auth": 1}` (a token revoked)."""
        if self.changes is None:
            return
        for line in self.changes.new_lines():
            if not line.strip():
                continue  # a change about a deleted user, blanked (`_blank_changes`)
            try:
                change = json.loads(line)
                if "auth" in change:
                    subject = AUTH
                elif "deleted" in change:
                    subject = self._drop(check_agent_id(str(change["deleted"])))
                else:
                    subject = self._apply(Record.parse(line)).agent_id
            except (ValueError, KeyError, TypeError, HeroError):
                log.warning("%s: a line that is not a change was skipped", self.changes.path)
                continue
            self._auth_stale |= subject == AUTH
            if self.on_change is not None:  # tell the other nodes of the cluster
                self._writes.spawn(self.on_change(subject), name="users:tell")

    async def _changed(self, subject: str, record: Record | None = None, *, deleted: bool = False) -> None:
        if self.note_changes and self.changes is not None:
            if deleted:
                line = json.dumps({"deleted": subject}).encode()
            else:
                line = record.encode() if record is not None else b'{"auth":1}'
            self.changes.append(line)
        if self.on_change is not None:
            await self.on_change(subject)

    # reading (memory)

    def get(self, name: str) -> User:
        self.catch_up()
        agent_id = self._names.get(name)
        if agent_id is None:
            raise NotFound(f"no user {name!r}")
        return self._records[agent_id].user

    def by_agent(self, agent_id: str) -> User | None:
        self.catch_up()
        record = self._records.get(agent_id)
        return None if record is None else record.user

    def list(self) -> list[User]:
        self.catch_up()
        return [r.user for r in sorted(self._records.values(), key=lambda r: (r.created, r.name))]

    def grant_of(self, agent_id: str) -> bytes | None:
        """The owner's grant for this registry's authority to host their agent (None: never given)."""
        record = self._records.get(agent_id)
        return bytes.fromhex(record.grant) if record is not None and record.grant else None

    def home_of(self, agent_id: str) -> str | None:
        record = self._records.get(agent_id)
        return record.home if record is not None else None

    # changing (durable)

    async def add_user(self, name: str, agent_id: str, *, key: UserKey | None = None, grant: bytes | None = None,
                       home: str | None = None) -> User:
        """A new user; with their `key` (just made) the registry signs their hosting grant itself."""
        record = self._new(name, agent_id, key=key, grant=grant, home=home)
        self._apply(record)
        await self._write_user(record)
        return record.user

    async def revoke_user(self, name: str) -> User:
        """Every token the user holds stops working at once."""
        record = replace(self._records[self.get(name).agent_id], revoked_at=time.time())
        self._apply(record)
        await self._write_user(record)
        return record.user

    async def set_grant(self, name: str, grant: bytes) -> User:
        """The owner's hosting grant, signed elsewhere (a user added with their own public key)."""
        record = self._records[self.get(name).agent_id]
        if not check_grant(bytes.fromhex(record.agent_id), self.authority, grant):
            raise UsageError(f"that grant is not {name}'s signature for authority {self.authority.hex()}")
        record = replace(record, grant=grant.hex())
        self._apply(record)
        await self._write_user(record)
        return record.user

    async def revoke_agent(self, agent_id: str) -> User:
        """Revoke the user whose agent this is (every token of theirs stops working at once)."""
        record = self._records.get(check_agent_id(agent_id))
        if record is None:
            raise NotFound("no user with that agent id")
        if record.revoked_at is None:
            record = replace(record, revoked_at=time.time())
            self._apply(record)
            await self._write_user(record)
        return record.user

    async def delete_user(self, agent_id: str) -> User:
        """The user is gone: revoked first (every node that holds them in memory refuses their tokens at once),
        then their record deleted from the store, every version of it, and blanked from `users.changed`."""
        user = await self.revoke_agent(agent_id)
        await self.stored.delete_user(self._records[agent_id])
        self._drop(agent_id)
        if self.changes is not None:
            self.changes.blank(agent_id.encode())
        await self._changed(agent_id, deleted=True)
        return user

    async def revoke_jti(self, jti: str, expires: float | None = None) -> None:
        """Revoke one token (sign-out), on every node that shares the registry."""
        until = expires if expires is not None else time.time() + LEGACY_REVOKED_TTL_S
        self._revoked[jti] = until
        await self._update_map(REVOKED, {jti: until})

    async def spend_nonce(self, nonce: str, expires: float) -> bool:
        """Mark a sign-in challenge's nonce used; False if it already was (a replay), here or on any node."""
        now = time.time()
        if self._nonces.get(nonce, 0.0) > now:
            return False
        if self.spend_shared is not None and not await self.spend_shared(nonce, expires):
            return False
        self._nonces[nonce] = expires
        await self._update_map(NONCES, {nonce: expires}, tell=False)  # the cluster checked it already
        return True

    # changing from synchronous code (tests, first start): memory now, the store soon (`flush`)

    def add(self, name: str, agent_id: str, *, key: UserKey | None = None, grant: bytes | None = None,
            home: str | None = None) -> User:
        record = self._new(name, agent_id, key=key, grant=grant, home=home)
        self._apply(record)
        self._writes.spawn(self._write_user(record), name="users:add")
        return record.user

    def revoke_token(self, jti: str, expires: float | None = None) -> None:
        until = expires if expires is not None else time.time() + LEGACY_REVOKED_TTL_S
        self._revoked[jti] = until
        self._writes.spawn(self._update_map(REVOKED, {jti: until}), name="users:revoke-token")

    def revoke(self, name: str) -> User:
        record = replace(self._records[self.get(name).agent_id], revoked_at=time.time())
        self._apply(record)
        self._writes.spawn(self._write_user(record), name="users:revoke")
        return record.user

    async def flush(self) -> None:
        """Wait until every change made from synchronous code is in the store."""
        await self._writes.join()

    async def aclose(self) -> None:
        await self.flush()
        await self._writes.aclose()

    # tokens

    def issue(self, user: User, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub=user.agent_id, name=user.name, role="user", ttl=ttl)

    def issue_operator(self, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub="operator", name="operator", role="operator", ttl=ttl)

    async def authenticate(self, token: str) -> TokenClaims:
        """Signature, expiry and revocation: the one check every API request passes."""
        claims = self.keys.verify_token(token)
        self.catch_up()
        if self._auth_stale:
            self._auth_stale = False
            await self.refresh(AUTH)
        if claims.jti in self._revoked:
            raise Unauthorized("token revoked")
        if claims.role == "user":
            record = self._records.get(claims.sub)
            if record is None:  # added by another node, or before this one heard of it
                try:
                    await self.refresh(claims.sub)
                except (HeroError, ValueError, KeyError):
                    raise Unauthorized("user unknown") from None
                record = self._records.get(claims.sub)
            if record is None or record.revoked_at is not None:
                raise Unauthorized("user revoked or unknown")
        elif claims.role != "operator":
            raise Unauthorized("invalid token role")
        return claims

    # the store

    def _new(self, name: str, agent_id: str, *, key: UserKey | None, grant: bytes | None,
             home: str | None) -> Record:
        if not NAME.match(name):
            raise UsageError(f"invalid user name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
        check_agent_id(agent_id)
        if name in self._names or agent_id in self._records:
            raise Conflict(f"user {name!r} or that key already exists")
        if key is not None:
            if key.agent_id != agent_id:
                raise UsageError("the user's key is not the key of that agent id")
            grant = sign_grant(key.signing, self.authority)
        if grant is not None and not check_grant(bytes.fromhex(agent_id), self.authority, grant):
            raise UsageError(f"the grant is not the signature of {agent_id[:16]}… for authority "
                             f"{self.authority.hex()}")
        return Record(name, agent_id, time.time(), grant=grant.hex() if grant else None, home=home)

    def _apply(self, record: Record) -> Record:
        known = self._records.get(record.agent_id)
        record = known.merged(record) if known is not None else record
        self._records[record.agent_id] = record
        self._names.setdefault(record.name, record.agent_id)
        return record

    def _drop(self, agent_id: str) -> str:
        record = self._records.pop(agent_id, None)
        if record is not None and self._names.get(record.name) == agent_id:
            del self._names[record.name]
        return agent_id

    async def _write_user(self, record: Record) -> None:
        async def written(merged: Record) -> None:
            await self._changed(record.agent_id, self._apply(merged))

        await self.stored.write_user(record, written)

    async def _update_map(self, key: str, entries: dict[str, float], *, tell: bool = True) -> None:
        await self.stored.update_map(key, entries)
        if tell:
            await self._changed(AUTH)

    async def _migrate(self) -> None:
        """Move an old node-local `users.db` into the store (once; the file is kept, renamed)."""
        legacy = read_legacy(self.data_dir) if self.data_dir is not None else None
        if legacy is None or self.data_dir is None:
            return
        records, revoked = legacy
        for record in records:
            await self._write_user(record)
        if revoked:
            await self._update_map(REVOKED, revoked)
        retire_legacy(self.data_dir, len(records))
