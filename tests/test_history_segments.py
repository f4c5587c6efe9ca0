"""A chat history as append-only segments in real QSS: bounded turns, bounded activation, paging, migration,
head pruning, a lost segment, and kill -9 between a seal and the head that records it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from statistics import median
from typing import Any

import pytest

from hero.chat import segments
from hero.chat.histories import Histories
from hero.chat.segments import KEEP_OPEN, segment_name
from hero.identity import NodeKeys
from hero.runtime.events import ChatMessage
from hero.runtime.keys import agent_key, state_key
from hero.runtime.node import Node
from hero.runtime.pruning import HEAD_VERSIONS, PRUNE_SLACK
from hero.seams.store import Version
from hero.store.qss import QSS
from tests import doubles
from tests.conftest import hero_cli, new_agent
from tests.doubles import ScriptedLLM
from tests.store.helpers import stored_fragment

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_ENTRIES = 64  # segments this small here (the node's are larger), so tests cross many seals quickly


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "SEGMENT_ENTRIES", SEGMENT_ENTRIES)


class Echo(doubles.Echo):
    """A turn as the assistant does it (the user's entry persisted, then the answer), answering nothing aloud."""

    silent = True


class Recording:
    """The real QSS, with what each put wrote and each read returned counted (the runtime sees a StateStore)."""

    def __init__(self, store: QSS) -> None:
        self.store = store
        self.data_dir = store.data_dir
        self.puts: list[tuple[str, int, float]] = []
        self.read_bytes = 0
        self.gets: list[str] = []  # keys read by `get`, in order

    async def put(self, key: str, data: bytes, *, epoch: int, expect: int | None = None) -> Version:
        began = time.perf_counter()
        version = await self.store.put(key, data, epoch=epoch, expect=expect)
        self.puts.append((key, len(data), time.perf_counter() - began))
        return version

    async def get(self, key: str, version: int | None = None) -> bytes:
        data = await self.store.get(key, version)
        self.read_bytes += len(data)
        self.gets.append(key)
        return data

    async def latest(self, key: str) -> tuple[Version, bytes] | None:
        found = await self.store.latest(key)
        self.read_bytes += len(found[1]) if found else 0
        return found

    async def head(self, key: str) -> Version | None:
        return await self.store.head(key)

    async def versions(self, key: str) -> list[Version]:
        return await self.store.versions(key)

    async def keys(self, prefix: str = "") -> list[str]:
        return await self.store.keys(prefix)

    async def prune(self, key: str, keep: int) -> int:
        return await self.store.prune(key, keep)

    async def aclose(self) -> None:
        pass


def node_over(store: Any, **options: Any) -> Node:
    return Node(store, ScriptedLLM(), Echo, node_id=NodeKeys.load_or_create(store.data_dir).node_id, **options)


def backend_bytes(store: QSS) -> int:
    """Bytes the directory backends hold (packs, manifests): what the store wrote to disk."""
    return sum(f.stat().st_size for f in (store.data_dir / "backends").rglob("*") if f.is_file())


def head_bound(messages: int = 0) -> int:
    """The largest head of `Echo`: a full open segment of its entries (short ones, under 100 bytes each), and
    the first seq of each sealed segment (at most 8 bytes for each `SEGMENT_ENTRIES` of `messages`)."""
    return (SEGMENT_ENTRIES + KEEP_OPEN + 2) * 100 + 8 * (messages // SEGMENT_ENTRIES + 1)


def old_entries(count: int) -> list[dict[str, Any]]:
    return [{"seq": i, "role": "user" if i % 2 else "assistant", "content": f"message {i} about topic{i % 97}",
             "ts": 1_700_000_000.0 + i, "kind": "chat"} for i in range(1, count + 1)]


async def store_old_layout(store: Any, agent: str, count: int) -> list[dict[str, Any]]:
    """An agent as today's nodes store it: every entry of its history inside its one state object."""
    entries = old_entries(count)
    await store.put(state_key(agent), json.dumps({"history": entries, "skills": {}}).encode(), epoch=1)
    return entries


async def turns(node: Node, agent: str, count: int, tag: str = "t") -> None:
    for i in range(count):
        await (await node.deliver(agent, ChatMessage(f"{tag}{i}"))).text()


async def test_a_turn_writes_and_activation_reads_the_same_bounded_bytes_at_10_and_10000_messages(store):
    recording = Recording(store)
    node = node_over(recording, idle_after_s=3600)
    small, large = new_agent(), new_agent()
    await store_old_layout(store, large, 10_000)
    await turns(node, small, 5)  # 10 messages
    await turns(node, large, 1)  # activated and migrated

    window = SEGMENT_ENTRIES  # turns: two entries each, so each window holds at least one seal
    stored = {small: 0, large: 0}
    heads: dict[str, list[int]] = {small: [], large: []}
    seconds: dict[str, list[float]] = {small: [], large: []}
    for n in range(window):  # the two agents' turns alternate one by one: a burst of load on a shared machine
        for agent in (small, large):  # hits both of a pair, not one agent's whole run
            recording.puts.clear()
            before = backend_bytes(store)
            await turns(node, agent, 1, tag=f"t{n}-")
            await node.settle()  # its head's pruning, in the background, is done: counted as this agent's
            stored[agent] += backend_bytes(store) - before
            heads[agent] += [size for key, size, _ in recording.puts if key.endswith("/state")]
            seconds[agent].append(sum(s for _, _, s in recording.puts))
    ratios = [b / a for a, b in zip(seconds[small], seconds[large], strict=True)]  # per pair of turns
    figures = {agent: (stored[agent] / window, max(heads[agent]), median(seconds[agent])) for agent in stored}
    per_turn_small = figures[small][0]
    per_turn_large, max_large, _ = figures[large]
    assert per_turn_large <= 1.2 * per_turn_small, figures  # bytes the backends took, per turn
    assert max_large <= head_bound(10_200), figures  # a full open segment and an integer a sealed one
    assert median(ratios) <= 2.0, (median(ratios), figures)  # the old layout's grew with the history

    for agent in (small, large):
        assert await node.hibernate(agent)
    recording.read_bytes = 0
    await turns(node, large, 1)
    history_bytes = sum(len(json.dumps(e)) for e in old_entries(10_000))
    assert recording.read_bytes <= 2 * head_bound(10_200) < history_bytes // 20  # the head and one segment (`WARM`)
    assert len(await Histories(node).entries(large)) == 10_000 + 2 * (window + 2)
    await node.aclose()


async def test_paging_returns_every_message_once_in_order_reading_segments_lazily(store):
    recording = Recording(store)
    node = node_over(recording, idle_after_s=3600)
    agent = new_agent()
    entries = await store_old_layout(store, agent, 3_000)
    await turns(node, agent, 3)
    chat = Histories(node)
    seqs: list[int] = []
    before = None
    recording.read_bytes = 0
    first = await chat.page(agent, limit=37)
    assert recording.read_bytes < 3 * 64 << 10  # a page reads the segments it shows, not the history
    page = first
    while True:
        seqs[:0] = [e.seq for e in page.entries]
        if not page.has_more:
            break
        before = page.next_before
        page = await chat.page(agent, limit=37, before=before)
    assert seqs == list(range(1, 3_007))
    streamed = [e async for e in chat.stream(agent)]
    assert [e.to_json() for e in streamed[:3_000]] == entries
    assert [e.seq for e in await chat.after(agent, 2_990)] == list(range(2_991, 3_007))
    deep = await chat.page(agent, limit=5, before=1_000)
    assert [e.seq for e in deep.entries] == [995, 996, 997, 998, 999] and deep.next_before == 995
    found = await chat.search(agent, "ABOUT topic12", limit=3)  # the newest matches first, read newest first
    assert [e.seq for e in found] == [2922, 2825, 2728]
    everywhere = await chat.search(agent, "topic12", limit=100)
    assert [e.seq for e in everywhere] == list(range(2922, 0, -97))
    await node.aclose()


def uneven_entries(count: int) -> list[dict[str, Any]]:
    """Entries of uneven length (20 to 620 characters), so segments sealed by size hold uneven counts."""
    return [{"seq": i, "role": "user" if i % 2 else "assistant", "content": f"m{i} " + "x" * ((i * 37) % 600),
             "ts": 1_700_000_000.0 + i, "kind": "chat"} for i in range(1, count + 1)]


async def test_a_page_from_a_deep_before_reads_at_most_two_segments(store, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 4 << 10)  # sealed by size: 10 to 40 entries a segment
    recording = Recording(store)
    node = node_over(recording, idle_after_s=3600)
    agent = new_agent()
    entries = uneven_entries(3_000)
    await store.put(state_key(agent), json.dumps({"history": entries, "skills": {}}).encode(), epoch=1)
    await turns(node, agent, 1)  # activated: migrated into 100+ segments
    assert await node.hibernate(agent)
    chat = Histories(node)
    for before in (2_950, 2_000, 1_234, 500, 77, 12):
        recording.gets.clear()
        page = await chat.page(agent, limit=10, before=before)
        assert [e.seq for e in page.entries] == list(range(max(1, before - 10), before))
        assert [e.to_json() for e in page.entries] == entries[max(0, before - 11) : before - 1]
        sealed = [key for key in recording.gets if "/history/" in key]
        assert len(sealed) <= 2, (before, sealed)  # the segment `before` falls in, and the one before it
    await node.aclose()


@pytest.mark.parametrize("recorded", ["all", "newest", "none"])
async def test_before_finds_its_segment_whatever_the_head_records_of_first_seqs(recorded: str,
                                                                               monkeypatch: pytest.MonkeyPatch):
    """Heads sealed before they recorded each segment's first seq (or only the newest ones') still page right."""
    from hero.chat.segments import Segments, migrate, seal, sealable

    monkeypatch.setattr(segments, "SEGMENT_BYTES", 2 << 10)
    entries = uneven_entries(600)
    head, seals = migrate(entries[:400])
    if recorded != "all":
        del head["firsts"]  # as sealed by the first segment layout
    if recorded == "newest":
        head["open"].extend(entries[400:])
        while count := sealable(head["open"]):
            seals.append(seal(head, count))
        assert 0 < len(head["firsts"]) < head["count"]
    stored = dict(seals)
    reads: list[str] = []

    async def load(name: str) -> bytes:
        reads.append(name)
        return stored[name]

    reader = Segments("agent", head, load)
    by_segment = {name: json.loads(data) for name, data in seals}
    for seq in range(1, head["last_seq"] + 1, 7):
        reads.clear()
        found = by_segment[segment_name(await reader.locate(seq))]
        assert found["first"] <= seq <= found["last"]
        if recorded == "all":
            assert reads == []  # straight from the head


async def test_migration_keeps_every_message_and_resumes_after_a_crash_half_way(store):
    from hero.chat.segments import migrate

    node = node_over(store, idle_after_s=3600)
    agent = new_agent()
    entries = await store_old_layout(store, agent, 1_500)
    _, seals = migrate(entries)
    for name, data in seals[:3]:  # a migration that died after three segments, before its head
        await store.put(agent_key(agent, name), data, epoch=1, expect=0)
    await turns(node, agent, 1)
    stored = json.loads(await store.get(state_key(agent)))["history"]
    assert stored["count"] == len(seals) and len(stored["open"]) >= KEEP_OPEN
    got = await Histories(node).entries(agent)
    assert [e.to_json() for e in got[:1_500]] == entries and len(got) == 1_502
    for name, _ in seals:  # each segment written once: the three already there were kept, not rewritten
        assert len(await store.versions(agent_key(agent, name))) == 1
    await node.aclose()


async def test_hero_storage_migrate_moves_old_agents_and_is_idempotent(tmp_path: Path):
    from tests.store.helpers import open_store

    data = tmp_path / "data"
    store = await open_store(data)
    agent = new_agent()
    entries = await store_old_layout(store, agent, 2_500)  # the CLI cuts with the node's own bounds
    await store.aclose()
    first = json.loads(hero_cli("storage", "migrate", "--data", str(data), "--json").stdout)
    again = json.loads(hero_cli("storage", "migrate", "--data", str(data), "--json").stdout)
    assert first["migrated"] == [agent] and first["segments_written"] >= 2
    assert again == {"migrated": [], "segments_written": 0, "already": 1, "skipped": {}}
    store = await open_store(data)
    node = node_over(store)
    assert [e.to_json() for e in await Histories(node).entries(agent)] == entries
    await store.aclose()


async def test_old_head_versions_are_pruned_while_other_objects_keep_theirs(store):
    node = node_over(store, idle_after_s=3600)
    agent = new_agent()
    for v in range(5):
        await store.put("node/other", b"v%d" % v, epoch=1)
    await turns(node, agent, HEAD_VERSIONS + PRUNE_SLACK)
    await node.settle()
    assert len(await store.versions(state_key(agent))) <= 2 * HEAD_VERSIONS + PRUNE_SLACK  # not the 72 written
    assert await node.hibernate(agent)
    await node.settle()
    assert len(await store.versions(state_key(agent))) == HEAD_VERSIONS
    assert len(await store.versions("node/other")) == 5
    assert len(await Histories(node).entries(agent)) == 2 * (HEAD_VERSIONS + PRUNE_SLACK)
    report = await store.gc(1)  # the operator's gc still works on everything else, and keeps segments
    assert report["versions_removed"] >= 4 and len(await store.versions("node/other")) == 1
    await node.aclose()


async def test_an_unreadable_segment_costs_that_range_only(store, tmp_path: Path):
    node = node_over(store, idle_after_s=3600)
    agent = new_agent()
    await store_old_layout(store, agent, 1_000)
    await turns(node, agent, 1)
    await node.hibernate(agent)
    key = agent_key(agent, segment_name(2))
    oid = store.ring.object_id(key)
    index = await store.index(oid)
    resolved = await store.resolve(oid, index, index.versions()[-1])
    gone = 0
    for s, seg in enumerate(resolved.manifest.segments):  # every fragment of segment 2 lost beyond repair
        for i, digest in enumerate(seg.hashes):
            fragment = stored_fragment(store.pool.by_name[resolved.places[s][i]].root, digest)
            fragment.write_bytes(b"rot")
            gone += 1
    assert gone
    got = await Histories(node).entries(agent)
    missing = [e for e in got if e.kind == "missing"]
    assert len(missing) == 1 and f"{SEGMENT_ENTRIES + 1}–{2 * SEGMENT_ENTRIES}" in missing[0].content
    assert [e.seq for e in got if e.kind != "missing"] == [
        s for s in range(1, 1_003) if not SEGMENT_ENTRIES < s <= 2 * SEGMENT_ENTRIES]
    page = await Histories(node).page(agent, limit=10, before=2 * SEGMENT_ENTRIES + 5)
    assert [e.kind for e in page.entries][-5:] == ["missing", "chat", "chat", "chat", "chat"] and page.has_more
    inside = await Histories(node).page(agent, limit=3, before=SEGMENT_ENTRIES + 10)  # `before` in the lost range
    assert [(e.seq, e.kind) for e in inside.entries] == [
        (SEGMENT_ENTRIES - 1, "chat"), (SEGMENT_ENTRIES, "chat"), (SEGMENT_ENTRIES + 1, "missing")]
    assert (await (await node.deliver(agent, ChatMessage("still here"))).text()) == ""  # the agent keeps working
    assert (await Histories(node).entries(agent))[-1].content == "echo still here"
    await node.aclose()


CRASHER = """
import asyncio, os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_history_segments import SEGMENT_ENTRIES, Recording, node_over, turns
from tests.store.helpers import open_store
import hero.chat.segments
hero.chat.segments.SEGMENT_ENTRIES = SEGMENT_ENTRIES  # as the test that restarts it

class KillAfterSeal(Recording):
    async def put(self, key, data, *, epoch, expect=None):
        version = await super().put(key, data, epoch=epoch, expect=expect)
        if "/history/" in key:
            print("sealed", key, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # between the seal and the head that records it
        return version

async def main():
    store = await open_store(Path({data!r}))
    node = node_over(KillAfterSeal(store))
    for i in range(400):
        await (await node.deliver({agent!r}, __import__("hero.runtime.events", fromlist=["x"]).ChatMessage(f"m{{i}}")))\
            .wait_accepted()
        print("accepted", i, flush=True)

asyncio.run(main())
"""


async def test_kill_9_between_a_seal_and_its_head_loses_nothing_and_duplicates_nothing(tmp_path: Path):
    from tests.store.helpers import open_store

    data, agent = tmp_path / "data", new_agent()
    NodeKeys.load_or_create(data)
    script = CRASHER.format(root=str(ROOT), data=str(data), agent=agent)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=PIPE, stderr=PIPE,
                                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    lines = out.decode().splitlines()
    accepted = [int(line.split()[1]) for line in lines if line.startswith("accepted")]
    assert accepted and any(line.startswith("sealed") for line in lines)

    store = await open_store(data)
    node = node_over(store, idle_after_s=3600)
    chat = Histories(node)
    users = [e.content for e in await chat.entries(agent) if e.role == "user"]
    assert users[: len(accepted)] == [f"m{i}" for i in accepted]  # every accepted message, once, in order
    assert len(users) == len(set(users))
    await turns(node, agent, SEGMENT_ENTRIES, tag="after")
    got = await chat.entries(agent)
    assert [e.seq for e in got] == list(range(1, len(got) + 1))  # no duplicate, no hole
    assert len(await store.versions(agent_key(agent, segment_name(1)))) == 1  # written once, never rewritten
    await node.aclose()
    await store.aclose()
