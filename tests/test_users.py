"""The user registry lives in the store: shared by nodes that share it, found again on a wiped disk, moved in
from an old users.db, and merged when two writers cross."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from hero.cluster.key import ClusterKey
from hero.errors import Unauthorized
from hero.identity import NodeKeys, UserKey
from hero.store.qss import open_qss
from hero.users import Registry, Users
from tests.conftest import auth, make_config, serving


async def registry(data: Path, keys: NodeKeys, shared: Path | None = None) -> Registry:
    store = await open_qss(data, keys, local_backends=0 if shared else 20,
                           **({"backends": _dirs(shared)} if shared else {}))
    reg = Registry(store, keys, data_dir=data)
    await reg.load()
    return reg


def _dirs(shared: Path) -> tuple:
    from hero.store.config import BackendSpec

    return tuple(BackendSpec(f"s{i:02d}", "shared", path=shared / f"{i:02d}") for i in range(20))


async def test_the_registry_survives_a_wiped_disk_with_the_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Users(data, NodeKeys.load_or_create(data)) as users:
        alice = users.add("alice", UserKey.generate().agent_id)
        token, claims = users.issue(alice)
        users.revoke_token(claims.jti, claims.exp)
        users.add("bob", UserKey.generate().agent_id)
    for path in data.iterdir():  # everything but the keys and the store's backends
        if path.name not in ("keys", "backends"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    reg = await registry(data, NodeKeys.load_or_create(data))
    try:
        assert [u.name for u in reg.list()] == ["alice", "bob"]
        with pytest.raises(Unauthorized, match="revoked"):
            await reg.authenticate(token)
    finally:
        await reg.store.aclose()


async def test_an_old_users_db_is_moved_into_the_store_on_first_start(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.data_dir.mkdir(parents=True)
    keys = NodeKeys.load_or_create(config.data_dir)
    alice, bob = UserKey.generate().agent_id, UserKey.generate().agent_id
    db = sqlite3.connect(config.data_dir / "users.db")  # the schema nodes before this one kept
    db.executescript("""
        CREATE TABLE users (name TEXT PRIMARY KEY, agent_id TEXT UNIQUE NOT NULL, created REAL NOT NULL,
                            revoked_at REAL);
        CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, revoked_at REAL NOT NULL);
        CREATE TABLE used_nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
    """)
    kept, _ = keys.issue_token(sub=alice, name="alice", role="user", ttl=3600)
    revoked, claims = keys.issue_token(sub=alice, name="alice", role="user", ttl=3600)
    db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", [("alice", alice, 1.0, None), ("bob", bob, 2.0, 3.0)])
    db.execute("INSERT INTO revoked_tokens VALUES (?, ?)", (claims.jti, time.time()))
    db.commit()
    db.close()
    async with serving(config) as parts, httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
        assert [(u.name, u.revoked) for u in parts.users.list()] == [("alice", False), ("bob", True)]
        assert (await http.get("/api/me", headers=auth(kept))).status_code == 200
        assert (await http.get("/api/me", headers=auth(revoked))).status_code == 401
    assert not (config.data_dir / "users.db").exists() and (config.data_dir / "users.db.migrated").exists()
    with Users(config.data_dir, keys) as users:  # read from the store now
        assert users.get("bob").revoked and users.get("alice").agent_id == alice


async def test_two_nodes_crossing_writes_keep_both_changes(tmp_path: Path) -> None:
    key = ClusterKey.generate()
    shared = tmp_path / "shared"
    a = await registry(tmp_path / "a", key.shared_keys(NodeKeys.load_or_create(tmp_path / "a")), shared)
    b = await registry(tmp_path / "b", key.shared_keys(NodeKeys.load_or_create(tmp_path / "b")), shared)
    try:
        agent = UserKey.generate().agent_id
        await a.add_user("alice", agent)
        tokens = [a.issue(a.get("alice"))[1] for _ in range(6)]
        await asyncio.gather(*(reg.revoke_jti(t.jti, t.exp) for reg, t in zip([a, b] * 3, tokens, strict=True)))
        fresh = await registry(tmp_path / "c", key.shared_keys(NodeKeys.load_or_create(tmp_path / "c")), shared)
        try:
            assert fresh.by_agent(agent) is not None
            for claims in tokens:  # every revocation is in, whichever node made it
                assert claims.jti in fresh._revoked
        finally:
            await fresh.store.aclose()
    finally:
        await a.store.aclose()
        await b.store.aclose()


async def test_a_change_made_with_hero_user_takes_effect_on_the_running_node_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with serving(config), httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
        with Users(config.data_dir, NodeKeys.load_or_create(config.data_dir)) as users:
            carol = users.add("carol", UserKey.generate().agent_id)  # another process's registry, same data dir
            token, claims = users.issue(carol)
            assert (await http.get("/api/me", headers=auth(token))).status_code == 200
            other, _ = users.issue(carol)
            users.revoke_token(claims.jti, claims.exp)
            assert (await http.get("/api/me", headers=auth(token))).status_code == 401
            assert (await http.get("/api/me", headers=auth(other))).status_code == 200
            users.revoke("carol")
            assert (await http.get("/api/me", headers=auth(other))).status_code == 401


async def test_tokens_are_good_on_every_node_of_a_cluster_and_nowhere_else(tmp_path: Path) -> None:
    key = ClusterKey.generate()
    shared = tmp_path / "shared"
    a = await registry(tmp_path / "a", key.shared_keys(NodeKeys.load_or_create(tmp_path / "a")), shared)
    b = await registry(tmp_path / "b", key.shared_keys(NodeKeys.load_or_create(tmp_path / "b")), shared)
    other = await registry(tmp_path / "o", ClusterKey.generate().shared_keys(NodeKeys.load_or_create(tmp_path / "o")),
                           tmp_path / "other-shared")
    try:
        user = await a.add_user("alice", UserKey.generate().agent_id)
        token, claims = a.issue(user)
        assert (await b.authenticate(token)).sub == user.agent_id  # b never heard of alice: read from the store
        with pytest.raises(Unauthorized, match="not issued"):
            await other.authenticate(token)  # another cluster's node
        forged, _ = other.keys.issue_token(sub=user.agent_id, name="alice", role="user", ttl=60)
        with pytest.raises(Unauthorized, match="not issued"):
            await b.authenticate(forged)
        await b.revoke_jti(claims.jti, claims.exp)
        await a.refresh("auth")  # what the cluster's broadcast does on every other node
        with pytest.raises(Unauthorized, match="revoked"):
            await a.authenticate(token)
    finally:
        for reg in (a, b, other):
            await reg.store.aclose()


async def test_one_unreadable_user_record_costs_that_user_not_the_node(tmp_path: Path, caplog) -> None:
    from hero.users.record import user_key
    from tests.test_runtime_faults import rot

    data = tmp_path / "data"
    with Users(data, NodeKeys.load_or_create(data)) as users:
        alice = users.add("alice", UserKey.generate().agent_id)
        bob = users.add("bob", UserKey.generate().agent_id)
        bob_token, _ = users.issue(bob)
        alice_token, _ = users.issue(alice)
    store = await open_qss(data, NodeKeys.load_or_create(data))
    try:
        await rot(store, user_key(alice.agent_id), 5)  # 15 of 20 fragments left: below the 16 needed
    finally:
        await store.aclose()
    reg = await registry(data, NodeKeys.load_or_create(data))
    try:
        assert [u.name for u in reg.list()] == ["bob"]
        assert (await reg.authenticate(bob_token)).sub == bob.agent_id
        with pytest.raises(Unauthorized):
            await reg.authenticate(alice_token)
        assert any(user_key(alice.agent_id) in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    finally:
        await reg.store.aclose()
