"""The user's data is theirs: `GET /api/me/export` gives all of it (streamed), `DELETE /api/me` and
`hero user delete NAME --purge` leave nothing of it on any backend, and the node forgets the agent.

Real QSS fragments on disk, a real node on 127.0.0.1. "Nothing left" is checked on the backends' files
themselves: before the deletion the test learns every object id and every fragment of the user's agent
(and takes a sample of each fragment's bytes); afterwards no backend file is named for those objects, no
pack lists those fragments, and no file holds those bytes, nor the user's plaintext.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from hero.chat.agent import ChatAgent
from hero.chat.segments import SEGMENT_ENTRIES
from hero.errors import HeroError
from hero.identity import NodeKeys
from hero.nodelock import NodeLock
from hero.runtime.events import ChatMessage, Event, Reply
from hero.skills.context import SLOT
from hero.store.backends.calls import GetFragments
from hero.store.qss import QSS, open_qss
from hero.users_data import agent_prefix
from hero.web.me_api import EXPORT_PAGE
from tests.conftest import add_user, auth, hero_cli, make_config, operator_token, serving

SECRET = "the-secret-of-alice-9c4e"  # plaintext only alice's agent keeps


class Keeper(ChatAgent):
    """Keeps what it hears without the LLM: `bulk N` adds N entries in one turn; `note X` keeps a note."""

    async def handle(self, event: Event, reply: Reply) -> None:
        if not isinstance(event, ChatMessage):
            reply.accept()
            return
        text = event.text
        if text.startswith("bulk "):
            for i in range(int(text.split()[1])):
                self.history.add("user" if i % 2 == 0 else "assistant", f"{SECRET if i == 0 else 'line'} {i}")
        elif text.startswith("note "):
            notes = self.ctx.state.setdefault(SLOT, {}).setdefault("notes", {}).setdefault("notes", [])
            notes.append({"id": len(notes) + 1, "text": text[5:], "ts": 0.0})
            self.history.add("user", text)
        else:
            self.history.add("user", text)
        await self.ctx.persist()
        reply.accept()
        reply.write("kept")


@dataclass
class Traces:
    """Where an agent's objects are on the backends: their object ids and fragments (digest -> a sample of its
    last bytes: random-looking unless the fragment is a tiny object's padding, which `found_on_disk` skips)."""

    oids: set[str]
    fragments: dict[str, bytes]


async def traces(store: QSS, agent_id: str) -> Traces:
    oids: set[str] = set()
    fragments: dict[str, bytes] = {}
    for key in await store.keys(agent_prefix(agent_id)):
        oid = store.catalog.ring.object_id(key)
        oids.add(oid)
        index = await store.index(oid)
        for number in index.versions():
            resolved = await store.resolve(oid, index, number)
            for s, seg in enumerate(resolved.manifest.segments):
                for i, digest in enumerate(seg.hashes):
                    backend = store.pool.by_name[resolved.places[s][i]]
                    data = (await store.pool.attempt(backend, GetFragments([digest])))
                    assert isinstance(data, list) and data[0] is not None
                    fragments[digest] = data[0][-48:]  # ciphertext or parity (the start is the codec's header)
    return Traces(oids, fragments)


def found_on_disk(backends: Path, found: Traces, plaintext: bytes) -> list[str]:
    """Every trace of the agent still in a backend's files: a name, a listed fragment, its bytes, plaintext."""
    left: list[str] = []
    samples = {digest: sample for digest, sample in found.fragments.items() if len(set(sample)) >= 24}
    assert len(samples) >= 20, "too few fragments with telling bytes to check"
    for path in backends.rglob("*"):
        if any(oid in part for part in path.parts for oid in found.oids):
            left.append(f"{path}: named for one of the agent's objects")
        if not path.is_file():
            continue
        data = path.read_bytes()
        for digest, sample in samples.items():
            if sample in data:
                left.append(f"{path}: holds the bytes of fragment {digest[:12]}")
            if path.suffix == ".idx" and bytes.fromhex(digest) in data and sample in data:
                left.append(f"{path}: lists fragment {digest[:12]}")
        if plaintext in data:
            left.append(f"{path}: holds the plaintext")
    return left


async def listed_fragments(store: QSS) -> set[str]:
    out: set[str] = set()
    for backend in store.pool.backends:
        out.update(f.digest for f in await backend.list_fragments())
    return out


async def test_purge_deletes_every_version_and_fragment_under_a_prefix_and_nothing_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = NodeKeys.load_or_create(data)
    a, b = "a" * 64, "b" * 64
    async with await open_qss(data, keys) as store:
        for version in range(3):
            await store.put(f"agent/{a}/state", f"{SECRET} v{version} ".encode() * 200, epoch=1)
            await store.put(f"agent/{b}/state", f"bob v{version}".encode(), epoch=1)
        await store.put(f"agent/{a}/timers", b"[]", epoch=1)
        found = await traces(store, a)
        assert len(found.oids) == 2 and len(found.fragments) >= 3 * 20
        report = await store.purge(agent_prefix(a))
        assert (report.objects, report.versions_removed, report.left) == (2, 4, [])
        assert await store.keys(agent_prefix(a)) == []
        assert not set(found.fragments) & await listed_fragments(store)
        assert found_on_disk(data / "backends", found, SECRET.encode()) == []
        assert await store.get(f"agent/{b}/state") == b"bob v2"  # the other agent's objects are untouched
        assert len(await store.versions(f"agent/{b}/state")) == 3
    async with await open_qss(data, keys) as again:  # a fresh process finds nothing of it either
        assert await again.keys(agent_prefix(a)) == []
        assert await again.keys("agent/") == [f"agent/{b}/state"]


async def test_a_purge_prefix_must_name_a_folder(tmp_path: Path) -> None:
    async with await open_qss(tmp_path / "data", NodeKeys.load_or_create(tmp_path / "data")) as store:
        for prefix in ("", "/", "agent/abc"):
            try:
                await store.purge(prefix)
            except HeroError as exc:
                assert exc.status == 400 and exc.field == "prefix"
            else:
                raise AssertionError(f"purge({prefix!r}) was allowed")


async def chat(http: httpx.AsyncClient, token: str, text: str) -> None:
    r = await http.post("/v1/chat/completions", headers=auth(token),
                        json={"messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text


async def all_messages(http: httpx.AsyncClient, token: str) -> list[dict]:
    out: list[dict] = []
    before = None
    while True:
        r = await http.get("/api/me/messages", headers=auth(token),
                           params={"limit": 500, **({"before": before} if before else {})})
        page = r.json()
        out = page["messages"] + out
        if not page["has_more"]:
            return out
        before = page["next_before"]


async def test_export_is_the_whole_history_oldest_first_with_notes_and_streams_in_pieces(tmp_path: Path) -> None:
    config = make_config(tmp_path, agent="tests.test_user_data:Keeper")
    async with serving(config):
        alice = add_user(config.data_dir, "alice")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await chat(http, alice["token"], "note my bike is blue")
            await chat(http, alice["token"], f"bulk {EXPORT_PAGE * 4 + 123}")
            await chat(http, alice["token"], "last words")
            history = await all_messages(http, alice["token"])
            pieces: list[bytes] = []
            async with http.stream("GET", "/api/me/export", headers=auth(alice["token"])) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
                async for piece in r.aiter_raw():
                    pieces.append(piece)
    doc = json.loads(b"".join(pieces))
    assert doc["history"] == history and doc["history_count"] == len(history) == EXPORT_PAGE * 4 + 125
    assert [e["seq"] for e in doc["history"]] == sorted(e["seq"] for e in doc["history"])
    assert doc["user"] == {"name": "alice", "agent_id": alice["agent_id"]}
    assert [n["text"] for n in doc["skills"]["notes"]["notes"]] == ["my bike is blue"]
    # streamed a page at a time: several pieces, none of them the whole document
    total = sum(map(len, pieces))
    assert len(pieces) >= 5 and max(map(len, pieces)) < total / 3, [len(p) for p in pieces]


async def test_export_of_an_agent_that_never_spoke_is_an_empty_history(tmp_path: Path) -> None:
    config = make_config(tmp_path, agent="tests.test_user_data:Keeper")
    async with serving(config):
        bob = add_user(config.data_dir, "bob")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
            r = await http.get("/api/me/export", headers=auth(bob["token"]))
    assert r.status_code == 200
    assert (r.json()["history"], r.json()["history_count"], r.json()["skills"]) == ([], 0, {})


async def test_delete_me_leaves_nothing_of_the_agent_and_the_node_forgets_it(tmp_path: Path) -> None:
    config = make_config(tmp_path, agent="tests.test_user_data:Keeper")
    async with serving(config) as parts:
        alice = add_user(config.data_dir, "alice")
        bob = add_user(config.data_dir, "bob")
        operator = operator_token(config.data_dir)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await chat(http, alice["token"], "note the door code is 4711")
            await chat(http, alice["token"], f"bulk {2 * SEGMENT_ENTRIES + 1}")  # sealed segments, not just a head
            await chat(http, bob["token"], "hello from bob")
            await parts.node.hibernate(alice["agent_id"])
            await chat(http, alice["token"], "awake again")  # in memory when deleted
            bob_before = await all_messages(http, bob["token"])
            found = await traces(parts.store, alice["agent_id"])
            assert len(found.oids) >= 3 and found.fragments  # the head, its timers or segments: every object
            metrics = (await http.get("/metrics", headers=auth(operator))).text
            assert alice["agent_id"] in metrics

            for params, status in (({}, 400), ({"confirm": "bob"}, 422), ({"confirm": "ALICE"}, 422)):
                r = await http.delete("/api/me", headers=auth(alice["token"]), params=params)
                assert r.status_code == status and r.json()["error"]["param"] == "confirm", r.text
            assert (await http.get("/api/me", headers=auth(alice["token"]))).status_code == 200  # nothing deleted

            r = await http.delete("/api/me", headers=auth(alice["token"]), params={"confirm": "alice"})
            assert r.status_code == 200, r.text
            assert r.json()["agent_id"] == alice["agent_id"] and r.json()["store"]["objects"] == len(found.oids)

            for path in ("/api/me", "/api/me/messages", "/api/me/export"):
                assert (await http.get(path, headers=auth(alice["token"]))).status_code == 401
            r = await http.post("/v1/chat/completions", headers=auth(alice["token"]),
                                json={"messages": [{"role": "user", "content": "still there?"}]})
            assert r.status_code == 401
            assert await all_messages(http, bob["token"]) == bob_before  # bob is untouched
            await chat(http, bob["token"], "bob goes on")

            agents = (await http.get("/api/node/agents", headers=auth(operator))).json()["agents"]
            power = (await http.get("/api/node/power", headers=auth(operator))).json()
            metrics = (await http.get("/metrics", headers=auth(operator))).text
            users = [u.name for u in parts.users.list()]
        assert alice["agent_id"] not in {a["agent_id"] for a in agents}
        assert bob["agent_id"] in {a["agent_id"] for a in agents}
        assert alice["agent_id"] not in json.dumps(power) and alice["agent_id"] not in metrics
        assert users == ["bob"]
        assert parts.node.agent_status(alice["agent_id"]) is None and not parts.node.timers
        assert await parts.store.keys(agent_prefix(alice["agent_id"])) == []
        assert await parts.store.head(f"users/{alice['agent_id']}") is None
        assert not set(found.fragments) & await listed_fragments(parts.store)
        assert found_on_disk(config.data_dir / "backends", found, SECRET.encode()) == []
    assert b"alice" not in (config.data_dir / "users.changed").read_bytes()


async def test_hero_user_delete_purge_on_a_stopped_node(tmp_path: Path) -> None:
    config = make_config(tmp_path, agent="tests.test_user_data:Keeper")
    async with serving(config) as parts:
        alice = add_user(config.data_dir, "alice")
        bob = add_user(config.data_dir, "bob")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await chat(http, alice["token"], "bulk 30")
            await chat(http, bob["token"], "hello from bob")
        await parts.node.hibernate(alice["agent_id"])
        found = await traces(parts.store, alice["agent_id"])
    data = str(config.data_dir)

    refused = hero_cli("user", "delete", "alice", "--data", data, check=False)
    assert refused.returncode == 2 and "--purge" in refused.stderr and len(refused.stderr.splitlines()) == 1
    unknown = hero_cli("user", "delete", "nobody", "--purge", "--data", data, check=False)
    assert unknown.returncode == 2 and "nobody" in unknown.stderr and len(unknown.stderr.splitlines()) == 1

    with NodeLock.acquire(config.data_dir, port=config.port):  # a running node: it must delete through its API
        running = hero_cli("user", "delete", "alice", "--purge", "--data", data, check=False)
    assert running.returncode == 2 and "in use" in running.stderr and len(running.stderr.splitlines()) == 1

    done = json.loads(hero_cli("user", "delete", "alice", "--purge", "--data", data, "--json").stdout)
    assert done["agent_id"] == alice["agent_id"] and done["store"]["objects"] == len(found.oids)
    assert [u["name"] for u in json.loads(hero_cli("user", "list", "--data", data, "--json").stdout)] == ["bob"]
    assert found_on_disk(config.data_dir / "backends", found, SECRET.encode()) == []

    async with serving(config) as parts:  # the node comes back without her; bob is served as before
        assert parts.node.agent_status(alice["agent_id"]) is None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            assert (await http.get("/api/me", headers=auth(alice["token"]))).status_code == 401
            assert (await all_messages(http, bob["token"]))[0]["content"] == "hello from bob"
        assert await parts.store.keys(agent_prefix(alice["agent_id"])) == []
