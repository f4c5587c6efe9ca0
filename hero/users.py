"""The user registry: who may use this node (or this cluster), which tokens are revoked, which sign-ins were used.

It lives in the store (QSS), not in a node-local file: nodes that share the store share
the registry, and a node with a wiped disk finds every user again. Its objects:

- `users/<agent id>`: one user (`Record`: name, created, revoked, the owner's hosting grant, home node);
- `auth/revoked`: revoked token ids, each until the token would have expired anyway;
- `auth/nonces`: sign-in challenges already answered, until they expire.

A write reads the latest version, merges its change in and writes the next version, then
reads again: records only grow (a user is revoked, a token is revoked), so when two writers
cross, the one whose change is missing writes again. Nothing fences these objects (epoch 0).

A node keeps the registry in memory (`Registry`: read at start; checking a token costs no
I/O) and hears of changes made elsewhere: by another process on its data dir (`hero user …`
notes the user in `DATA/users.changed`, which the node stats on each check), by another node
(the cluster's broadcast calls `refresh`), or when a token names a user it has not seen (read
then). An existing `DATA/users.db` is moved in on first start and kept as `users.db.migrated`.
Tools (the CLI, tests, benchmarks) use `Users`: the same registry over its own store on a
private loop thread, every call durable before it returns. The node never holds a user's
private key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from hero.errors import Conflict, HeroError, NotFound, StorageError, Unauthorized, Unavailable, UsageError
from hero.identity import NodeKeys, TokenClaims, UserKey, check_agent_id
from hero.net.records import check_grant, sign_grant
from hero.nursery import Nursery
from hero.seams.store import Purging, StateStore
from hero.seams.users import User

log = logging.getLogger("hero.users")
T = TypeVar("T")

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
USER_TTL = 30 * 86400.0
USERS = "users/"
REVOKED = "auth/revoked"
NONCES = "auth/nonces"
AUTH = "auth"  # the subject of a change to `auth/revoked` or `auth/nonces`
CHANGES = "users.changed"
LEGACY = "users.db"
LEGACY_REVOKED_TTL_S = 365 * 86400.0  # users.db kept no expiry for revoked tokens: keep them a year
WRITE_TRIES = 8
LOAD_CONCURRENCY = 16


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


class Registry:
    """The registry as a node holds it: in memory, written through to the store."""

    def __init__(self, store: StateStore, keys: NodeKeys, *, data_dir: Path | None = None,
                 note_changes: bool = False) -> None:
        self.keys = keys  # they sign tokens and sign-in challenges (the cluster's, in a cluster)
        self.authority = keys.signing.verify_key.encode()  # what owners grant hosting to
        self.store = store
        self.data_dir = data_dir
        self.note_changes = note_changes  # a tool's registry: tell a node running on this data dir
        self.on_change: Callable[[str], Coroutine[Any, Any, None]] | None = None  # the cluster's broadcast
        self.spend_shared: Callable[[str, float], Awaitable[bool]] | None = None  # the cluster's nonce check
        self._records: dict[str, Record] = {}
        self._names: dict[str, str] = {}
        self._revoked: dict[str, float] = {}
        self._nonces: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._writes = Nursery("users")
        self._changes_at = 0
        self._changes_size = -1
        self._auth_stale = False  # another process revoked a token: read `auth/revoked` before the next check

    # loading and hearing of changes

    async def load(self) -> None:
        """Read the whole registry (moving an old `users.db` in first)."""
        await self._migrate()
        self._skip_changes()
        keys = [k for k in await self.store.keys(USERS) if len(k) == len(USERS) + 64]
        gate = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def read(key: str) -> None:
            async with gate:
                await self.refresh(key[len(USERS):])

        await asyncio.gather(*(read(k) for k in keys))
        await self.refresh(AUTH)

    async def refresh(self, subject: str) -> None:
        """Read one user (by agent id), or the revoked tokens and nonces (`auth`), again from the store."""
        if subject == AUTH:
            self._revoked.update((await self._read_map(REVOKED))[1])
            self._nonces.update((await self._read_map(NONCES))[1])
            return
        head = await self.store.latest(user_key(check_agent_id(subject)))
        if head is not None:
            self._apply(Record.parse(head[1]))
        elif (known := self._records.get(subject)) is not None and known.revoked_at is not None:
            self._drop(subject)  # deleted (a deletion revokes first); a new user's first write may still be on its way

    def catch_up(self) -> None:
        """Apply what another process on this data dir changed (`DATA/users.changed` grew): one stat when
        nothing did. Each line is a changed user's record, or `{"auth": 1}` (a token revoked)."""
        if self.data_dir is None:
            return
        try:
            size = (self.data_dir / CHANGES).stat().st_size
        except OSError:
            return
        if size == self._changes_size:
            return
        self._changes_size = size
        with open(self.data_dir / CHANGES, "rb") as f:
            f.seek(self._changes_at)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._changes_at += end
        for line in data[:end].splitlines():
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
                log.warning("%s: a line that is not a change was skipped", self.data_dir / CHANGES)
                continue
            self._auth_stale |= subject == AUTH
            if self.on_change is not None:  # tell the other nodes of the cluster
                self._writes.spawn(self.on_change(subject), name="users:tell")

    def _skip_changes(self) -> None:
        if self.data_dir is not None:
            try:
                self._changes_at = self._changes_size = (self.data_dir / CHANGES).stat().st_size
            except OSError:
                self._changes_at, self._changes_size = 0, -1

    async def _changed(self, subject: str, record: Record | None = None, *, deleted: bool = False) -> None:
        if self.note_changes and self.data_dir is not None:
            if deleted:
                line = json.dumps({"deleted": subject}).encode()
            else:
                line = record.encode() if record is not None else b'{"auth":1}'
            fd = os.open(self.data_dir / CHANGES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")  # one write: lines of concurrent writers never mix
            finally:
                os.close(fd)
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
        key = user_key(agent_id)
        async with self._lock(key):
            if not isinstance(self.store, Purging):
                raise Unavailable("this store cannot delete for good")
            report = await self.store.delete(key)
            if report.left:
                raise StorageError(f"user {user.name!r}: revoked, but not yet deleted everywhere: "
                                   f"{'; '.join(report.left[:3])}; try again")
        self._drop(agent_id)
        self._blank_changes(agent_id)
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

    def _blank_changes(self, agent_id: str) -> None:
        """Overwrite, in place and at the same length, every line of `users.changed` about this user: their name
        leaves the disk, and the offsets readers keep into the file stay true."""
        if self.data_dir is None:
            return
        try:
            fd = os.open(self.data_dir / CHANGES, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            needle = agent_id.encode()
            offset = 0
            for line in data.splitlines(keepends=True):
                if needle in line and line.endswith(b"\n"):
                    os.pwrite(fd, b" " * (len(line) - 1), offset)
                offset += len(line)
        finally:
            os.close(fd)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _write_user(self, record: Record) -> None:
        key = user_key(record.agent_id)
        async with self._lock(key):
            for attempt in range(WRITE_TRIES):
                head = await self.store.latest(key)
                stored = Record.parse(head[1]) if head else None
                merged = stored.merged(record) if stored is not None else record
                if merged != stored:
                    try:  # only over the version just read: a writer that crossed us makes us merge again
                        await self.store.put(key, merged.encode(), epoch=0, expect=head[0].version if head else 0)
                    except Conflict:
                        await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                        continue
                await self._changed(record.agent_id, self._apply(merged))
                return
        raise Conflict(f"user {record.name!r}: other writers kept crossing this change; try again")

    async def _read_map(self, key: str) -> tuple[int, dict[str, float]]:
        """The object's version (0: none) and its unexpired entries."""
        head = await self.store.latest(key)
        if head is None:
            return 0, {}
        now = time.time()
        return head[0].version, {k: float(v) for k, v in json.loads(head[1]).items() if float(v) > now}

    async def _update_map(self, key: str, entries: dict[str, float], *, tell: bool = True) -> None:
        async with self._lock(key):
            for attempt in range(WRITE_TRIES):
                version, stored = await self._read_map(key)
                if entries.items() <= stored.items():
                    break
                merged = json.dumps(stored | entries, separators=(",", ":")).encode()
                try:
                    await self.store.put(key, merged, epoch=0, expect=version)
                except Conflict:
                    await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                    continue
                break
            else:
                raise Conflict(f"{key}: other writers kept crossing this change; try again")
        if tell:
            await self._changed(AUTH)

    async def _migrate(self) -> None:
        """Move an old node-local `users.db` into the store (once; the file is kept, renamed)."""
        if self.data_dir is None or not (self.data_dir / LEGACY).is_file():
            return
        path = self.data_dir / LEGACY
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            users = db.execute("SELECT name, agent_id, created, revoked_at FROM users").fetchall()
            revoked = db.execute("SELECT jti, revoked_at FROM revoked_tokens").fetchall()
        except sqlite3.Error as exc:
            log.error("%s could not be read (%s); its users were not moved into the store", path, exc)
            return
        finally:
            db.close()
        for name, agent_id, created, revoked_at in users:
            await self._write_user(Record(name, agent_id, float(created), revoked_at))
        if revoked:
            await self._update_map(REVOKED, {jti: float(at) + LEGACY_REVOKED_TTL_S for jti, at in revoked})
        try:
            os.replace(path, path.with_name(LEGACY + ".migrated"))
        except FileNotFoundError:
            pass  # another process moved it first
        log.warning("moved %d users from %s into the store (the file is kept as %s.migrated)", len(users), path,
                    LEGACY)


class Users:
    """The registry for tools (the CLI, tests, benchmarks): its own store, every call durable when it returns.

    The store is opened at the first call that needs it (issuing a token does not). A node running on the
    same data dir hears of each change at its next request.
    """

    def __init__(self, data_dir: Path, keys: NodeKeys) -> None:
        self.data_dir = Path(data_dir)
        self.keys = keys
        self._registry: Registry | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Users:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="hero-users", daemon=True)
            self._thread.start()
            try:
                self._registry = self._run(self._open())
            except BaseException:
                self._stop()
                raise
        return self._registry

    async def _open(self) -> Registry:
        from hero.store.qss import open_qss

        store = await open_qss(self.data_dir, self.keys)
        registry = Registry(store, self.keys, data_dir=self.data_dir, note_changes=True)
        try:
            await registry.load()
        except BaseException:
            await store.aclose()
            raise
        return registry

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def add(self, name: str, agent_id: str, *, key: UserKey | None = None, grant: bytes | None = None,
            home: str | None = None) -> User:
        registry = self.registry
        return self._run(registry.add_user(name, agent_id, key=key, grant=grant, home=home))

    def get(self, name: str) -> User:
        return self.registry.get(name)

    def by_agent(self, agent_id: str) -> User | None:
        return self.registry.by_agent(agent_id)

    def list(self) -> list[User]:
        return self.registry.list()

    def revoke(self, name: str) -> User:
        registry = self.registry
        return self._run(registry.revoke_user(name))

    def call(self, work: Callable[[Registry], Coroutine[Any, Any, T]]) -> T:
        """Run `work` over the registry (and its store) on the registry's loop: a tool's composite change."""
        registry = self.registry
        return self._run(work(registry))

    def set_grant(self, name: str, grant: bytes) -> User:
        registry = self.registry
        return self._run(registry.set_grant(name, grant))

    def revoke_token(self, jti: str, expires: float | None = None) -> None:
        registry = self.registry
        self._run(registry.revoke_jti(jti, expires))

    def issue(self, user: User, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub=user.agent_id, name=user.name, role="user", ttl=ttl)

    def issue_operator(self, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub="operator", name="operator", role="operator", ttl=ttl)

    # the web's seam too (a test serving an app over a tool's registry): run on the registry's thread

    async def authenticate(self, token: str) -> TokenClaims:
        registry = self.registry
        return await self._call(registry.authenticate(token))

    async def spend_nonce(self, nonce: str, expires: float) -> bool:
        registry = self.registry
        return await self._call(registry.spend_nonce(nonce, expires))

    async def flush(self) -> None:
        """Nothing to wait for: every change is in the store when its call returns."""

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def close(self) -> None:
        if self._registry is None:
            return
        try:
            self._run(self._registry.store.aclose())
        finally:
            self._registry = None
            self._stop()

    def _stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        self._loop = self._thread = None
