"""The registry's objects in the store (QSS): read, and written by merging over the version just read.

Records only grow (a user is revoked, a token is revoked), so when two writers cross, the one whose change is
missing merges again and writes the next version. Nothing fences these objects (epoch 0). An old node-local
`DATA/users.db` is read here once, to be moved into the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hero.errors import Conflict, StorageError, Unavailable
from hero.seams.store import Purging, StateStore
from hero.users.record import LEGACY_REVOKED_TTL_S, USERS, Record, user_key

log = logging.getLogger("hero.users")

LEGACY = "users.db"
WRITE_TRIES = 8


class UserStore:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._locks: dict[str, asyncio.Lock] = {}

    async def agent_ids(self) -> list[str]:
        """The agent ids of every stored user."""
        return [k[len(USERS):] for k in await self.store.keys(USERS) if len(k) == len(USERS) + 64]

    async def read_user(self, agent_id: str) -> Record | None:
        head = await self.store.latest(user_key(agent_id))
        return None if head is None else Record.parse(head[1])

    async def write_user(self, record: Record, written: Callable[[Record], Awaitable[None]]) -> None:
        """Merge `record` into the stored one; `written` gets the merged record, still under the user's lock."""
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
                await written(merged)
                return
        raise Conflict(f"user {record.name!r}: other writers kept crossing this change; try again")

    async def delete_user(self, record: Record) -> None:
        """Every version of the user's object, from every backend."""
        async with self._lock(user_key(record.agent_id)):
            if not isinstance(self.store, Purging):
                raise Unavailable("this store cannot delete for good")
            report = await self.store.delete(user_key(record.agent_id))
            if report.kept:  # not when pending: the store deletes it there once they answer
                raise StorageError(f"user {record.name!r}: revoked, but not yet deleted everywhere: "
                                   f"{'; '.join(report.left[:3])}; try again")

    async def read_map(self, key: str) -> tuple[int, dict[str, float]]:
        """The object's version (0: none) and its unexpired entries."""
        head = await self.store.latest(key)
        if head is None:
            return 0, {}
        now = time.time()
        return head[0].version, {k: float(v) for k, v in json.loads(head[1]).items() if float(v) > now}

    async def update_map(self, key: str, entries: dict[str, float]) -> None:
        async with self._lock(key):
            for attempt in range(WRITE_TRIES):
                version, stored = await self.read_map(key)
                if entries.items() <= stored.items():
                    return
                merged = json.dumps(stored | entries, separators=(",", ":")).encode()
                try:
                    await self.store.put(key, merged, epoch=0, expect=version)
                except Conflict:
                    await asyncio.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                    continue
                return
        raise Conflict(f"{key}: other writers kept crossing this change; try again")

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def read_legacy(data_dir: Path) -> tuple[list[Record], dict[str, float]] | None:
    """The users and revoked tokens (until when) of an old `users.db`; None if there is none or it is unreadable."""
    path = data_dir / LEGACY
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        users = db.execute("SELECT name, agent_id, created, revoked_at FROM users").fetchall()
        revoked = db.execute("SELECT jti, revoked_at FROM revoked_tokens").fetchall()
    except sqlite3.Error as exc:
        log.error("%s could not be read (%s); its users were not moved into the store", path, exc)
        return None
    finally:
        db.close()
    return ([Record(name, agent_id, float(created), revoked_at) for name, agent_id, created, revoked_at in users],
            {jti: float(at) + LEGACY_REVOKED_TTL_S for jti, at in revoked})


def retire_legacy(data_dir: Path, moved: int) -> None:
    """Keep the moved `users.db` as `users.db.migrated`, so it is not moved again."""
    path = data_dir / LEGACY
    try:
        os.replace(path, path.with_name(LEGACY + ".migrated"))
    except FileNotFoundError:
        pass  # another process moved it first
    log.warning("moved %d users from %s into the store (the file is kept as %s.migrated)", moved, path, LEGACY)
