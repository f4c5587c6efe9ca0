"""An object that cannot be read (every manifest replica corrupt, a version unresolvable, too few fragments) does
not vanish: scrub names it as damaged and exits non-zero, and `hero storage status` and `/api/node/storage` show it."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
import uvicorn

from hero.config import NodeConfig
from hero.identity import NodeKeys
from hero.users import Users
from hero.web.app import create_app
from tests.conftest import free_port, hero_cli
from tests.store.helpers import AGENT, open_store

KEY = AGENT + "/timers"


async def _stored(data: Path, versions: int = 1) -> str:
    store = await open_store(data)
    try:
        for n in range(versions):
            await store.put(KEY, b'[{"due": %d}]' % n, epoch=1)
        await store.put("node/fine", b"still fine", epoch=1)
        return store.ring.object_id(KEY)
    finally:
        await store.aclose()


def _manifests(data: Path, oid: str, version: int) -> list[Path]:
    found = sorted((data / "backends").glob(f"*/meta/obj/{oid}/{version:012d}.m"))
    assert len(found) == 5
    return found


def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


async def _api_storage(data: Path) -> dict:
    """`GET /api/node/storage` of a real app over HTTP, as the dashboard polls it."""
    users = Users(data, NodeKeys.load_or_create(data))
    store = await open_store(data)
    port = free_port()
    try:
        token, _ = users.issue_operator()
        app = create_app(config=NodeConfig(data_dir=data), node=None, chat=None, users=users, llm=None, store=store)
        sock = socket.create_server(("127.0.0.1", port))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
                reply = await client.get("/api/node/storage", headers={"Authorization": f"Bearer {token}"})
                assert reply.status_code == 200
                return reply.json()
        finally:
            server.should_exit = True
            await task
    finally:
        await store.aclose()
        users.close()


@pytest.mark.parametrize("where", ["body", "signature"])
async def test_an_object_whose_every_manifest_replica_is_corrupt_is_reported_by_name(tmp_path: Path, where: str):
    data = tmp_path / "data"
    oid = await _stored(data)
    for path in _manifests(data, oid, 1):
        _flip(path, 30 if where == "body" else path.stat().st_size - 10)

    scrub = hero_cli("storage", "scrub", "--data", str(data), "--json", check=False)
    assert scrub.returncode == 1, scrub.stderr
    report = json.loads(scrub.stdout)
    assert report["objects"] == 2 and report["damaged_objects"] == 1
    (damaged,) = report["damaged"]
    assert damaged["key"] == KEY and damaged["oid"] == oid and "no valid replica" in damaged["error"]
    status = json.loads(hero_cli("storage", "status", "--data", str(data), "--json").stdout)
    assert [d["key"] for d in status["damaged"]] == [KEY] and status["damaged_objects"] == 1
    if where == "body":
        text = hero_cli("storage", "scrub", "--data", str(data), check=False)
        assert text.returncode == 1 and KEY in text.stdout and "damaged" in text.stdout
        assert KEY in hero_cli("storage", "status", "--data", str(data)).stdout
    else:
        api = await _api_storage(data)
        assert [d["key"] for d in api["damaged"]] == [KEY] and api["damaged_objects"] == 1


async def test_replicas_too_broken_to_name_the_object_still_report_it(tmp_path: Path):
    data = tmp_path / "data"
    oid = await _stored(data)
    for path in _manifests(data, oid, 1):
        path.write_bytes(b"\0" * path.stat().st_size)
    store = await open_store(data)
    try:
        report = await store.scrub()
        assert report["objects"] == 2 and report["damaged_objects"] == 1
        (damaged,) = report["damaged"]
        assert damaged["key"] is None and damaged["oid"] == oid and damaged["error"]
        assert (await store.status())["damaged"][0]["oid"] == oid
    finally:
        await store.aclose()


async def test_an_unreadable_version_is_named_with_its_version_and_healing_clears_it(tmp_path: Path):
    data = tmp_path / "data"
    oid = await _stored(data, versions=2)
    replicas = _manifests(data, oid, 2)
    for path in replicas:
        _flip(path, 40)
    store = await open_store(data)
    try:
        report = await store.scrub()
        assert report["damaged_objects"] == 1 and report["unrecoverable"] >= 1
        (damaged,) = report["damaged"]
        assert (damaged["key"], damaged["version"]) == (KEY, 2)
        for path in replicas:
            _flip(path, 40)  # the operator restores the replicas
        again = await store.scrub()
        assert (again["damaged_objects"], again["damaged"]) == (0, [])
        assert (await store.status())["damaged_objects"] == 0
    finally:
        await store.aclose()


async def test_an_object_with_too_few_fragments_left_is_reported_damaged(tmp_path: Path):
    data = tmp_path / "data"
    await _stored(data)
    store = await open_store(data)
    try:
        oid = store.ring.object_id(KEY)
        index = await store.index(oid)
        resolved = await store.resolve(oid, index, 1)
        for n, name in enumerate(resolved.places[0][:5]):
            backend = store.pool.by_name[name]
            assert await backend.delete_fragments([resolved.manifest.segments[0].hashes[n]]) == 1
        report = await store.scrub()
        assert report["damaged_objects"] == 1 and report["damaged"][0]["key"] == KEY
        assert "segment 0" in report["damaged"][0]["error"]
        assert await store.get("node/fine") == b"still fine"
    finally:
        await store.aclose()


async def test_a_replica_whose_signer_rotted_does_not_make_the_object_anothers(tmp_path: Path):
    """A flipped byte in the signer field must not turn our object into "another node's" (skipped by scrub,
    gc and keys): only a replica that verifies under its claimed signer says whose the object is."""
    data = tmp_path / "data"
    oid = await _stored(data)
    replicas = _manifests(data, oid, 1)
    for path in replicas[:4]:
        raw = path.read_bytes()
        at = raw.index(b'"signer":"') + len(b'"signer":"')
        path.write_bytes(raw[:at] + (b"0" if raw[at : at + 1] != b"0" else b"1") + raw[at + 1 :])
    store = await open_store(data)
    try:
        assert await store.keys() == [KEY, "node/fine"]
        report = await store.scrub()
        assert (report["objects"], report["manifests_repaired"], report["damaged_objects"]) == (2, 4, 0)
    finally:
        await store.aclose()
