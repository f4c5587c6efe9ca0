"""A user deleted while a backend is down: the deletion is done for them at once, and on that backend as soon as
it answers again, by the running node or by the next one to start.

Real QSS on disk, a real node on 127.0.0.1, the real `hero` CLI. Two of the 20 backend directories are moved
away and a file put in their place (the backend is down, and keeps what it held); "nothing left" is checked on
the backends' files as in `test_user_data.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from hero.store import purges
from hero.store.qss import QSS
from hero.users.stored import user_key
from hero.users_data import agent_prefix
from tests.conftest import add_user, auth, hero_cli, make_config, serving
from tests.store.helpers import plug, unplug
from tests.test_runtime_faults import eventually
from tests.test_user_data import SECRET, all_messages, chat, found_on_disk, traces


def only_on_the_down_backends(left: list[str]) -> bool:
    return bool(left) and all("/gone-" in line for line in left)


async def test_delete_me_with_backends_down_answers_202_and_purges_them_when_they_are_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(purges, "FIRST_RETRY_S", 3600.0)  # so only a backend coming back can finish it here
    config = make_config(tmp_path, agent="tests.test_user_data:Keeper")
    backends = config.data_dir / "backends"
    async with serving(config) as parts:
        alice = add_user(config.data_dir, "alice")
        bob = add_user(config.data_dir, "bob")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await chat(http, alice["token"], "note the door code is 4711")
            await chat(http, alice["token"], "bulk 40")
            await chat(http, bob["token"], "hello from bob")
            found = await traces(parts.store, alice["agent_id"])
            unplug(backends)

            r = await http.delete("/api/me", headers=auth(alice["token"]), params={"confirm": "alice"})
            assert r.status_code == 202, r.text
            store = r.json()["store"]
            assert store["pending"] is True and store["objects"] == len(found.oids)
            assert any("local-05" in line for line in store["left"]), store["left"]
            assert (await http.get("/api/me", headers=auth(alice["token"]))).status_code == 401
            assert [u.name for u in parts.users.list()] == ["bob"]
            assert only_on_the_down_backends(found_on_disk(backends, found, SECRET.encode()))
            status = await parts.store.status()
            pending = {p["prefix"]: p for p in status["purges_pending"]}
            assert set(pending) == {agent_prefix(alice["agent_id"]), user_key(alice["agent_id"])}  # agent, record
            assert pending[agent_prefix(alice["agent_id"])]["backends"] == ["local-05", "local-06"]
            assert (config.data_dir / "qss" / "purges.json").exists()

            plug(backends)
            await parts.store.scrub()  # any call that reaches them: the pool sees them back, the purge follows
            await eventually(lambda: not (config.data_dir / "qss" / "purges.json").exists(), timeout_s=20)
            assert (await parts.store.status())["purges_pending"] == []
            assert found_on_disk(backends, found, SECRET.encode()) == []
            assert await parts.store.keys(agent_prefix(alice["agent_id"])) == []
            await chat(http, bob["token"], "bob goes on")
            assert [m["content"] for m in await all_messages(http, bob["token"])][-1] == "bob goes on"


async def test_hero_user_delete_purge_with_a_backend_down_is_finished_by_the_next_node(tmp_path: Path) -> None:
    config = make_config(tmp_path, agent="tests.test_user_data:Keeper")
    backends = config.data_dir / "backends"
    async with serving(config) as parts:
        alice = add_user(config.data_dir, "alice")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await chat(http, alice["token"], "bulk 30")
        await parts.node.hibernate(alice["agent_id"])
        found = await traces(parts.store, alice["agent_id"])
    data = str(config.data_dir)
    unplug(backends)

    done = hero_cli("user", "delete", "alice", "--purge", "--data", data)
    assert "when they answer" in done.stdout and "hero storage status" in done.stdout, done.stdout
    status = hero_cli("storage", "status", "--data", data, check=False)
    assert "purge pending since" in status.stdout and agent_prefix(alice["agent_id"]) in status.stdout, status.stdout
    assert "local-05, local-06" in status.stdout
    assert only_on_the_down_backends(found_on_disk(backends, found, SECRET.encode()))

    plug(backends)
    async with serving(config) as parts:  # the node finishes what the deletion left, at start
        await eventually(lambda: not (config.data_dir / "qss" / "purges.json").exists(), timeout_s=20)
        assert await parts.store.keys(agent_prefix(alice["agent_id"])) == []
    assert found_on_disk(backends, found, SECRET.encode()) == []
    out = json.loads(hero_cli("storage", "status", "--data", data, "--json").stdout)
    assert out["purges_pending"] == []


async def test_a_pending_purge_is_retried_after_its_back_off_without_any_traffic(
        store: QSS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(purges, "FIRST_RETRY_S", 0.2)
    backends = tmp_path / "data" / "backends"
    await store.put("agent/a/state", b"a" * 5000, epoch=1)
    await store.put("agent/b/state", b"b" * 5000, epoch=1)
    await store.start()
    unplug(backends)
    report = await store.purge("agent/a/")
    assert report.pending and sorted(report.leftovers) == ["local-05", "local-06"]
    assert len(report.leftovers["local-05"].fragments) >= 1
    again = await store.purge("agent/a/")  # run again (the CLI, say) while they are still down: finds nothing new
    assert again.objects == 0 and again.pending  # and what the first run recorded is kept, not replaced
    [pending] = await store.purges.status()
    assert pending["backends"] == ["local-05", "local-06"]
    plug(backends)
    await eventually(lambda: not (tmp_path / "data" / "qss" / "purges.json").exists(), timeout_s=10)
    assert await store.keys("agent/") == ["agent/b/state"]
    assert await store.get("agent/b/state") == b"b" * 5000  # the other agent's object is untouched
    left = [f for f in (backends / "05").rglob("*") if f.is_file() and b"a" * 64 in f.read_bytes()]
    assert left == [] and (await store.status())["purges_pending"] == []
