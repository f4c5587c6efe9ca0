"""Several real nodes (runtime + QSS) sharing one store and the cluster directory's rules, in one process:
one activation per agent, leases that lapse, fencing, failover with history, timers taken over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hero.errors import LeaseHeld, StaleEpoch, Unavailable
from hero.identity import NodeKeys
from hero.runtime.events import ChatMessage
from hero.runtime.keys import state_key
from hero.runtime.node import Node
from hero.runtime.ray_directory import DirectoryService
from hero.store.qss import QSS, open_qss
from tests.cluster.local import LocalDirectory
from tests.conftest import history, new_agent
from tests.doubles import ScriptedLLM
from tests.test_runtime import Recorder

TTL_S = 1.2


@asynccontextmanager
async def cluster(tmp_path: Path, count: int) -> AsyncIterator[list[Node]]:
    """`count` nodes, each with its own QSS over the same 20 backend directories, and one directory service."""
    from hero.store.config import BackendSpec

    service = DirectoryService()
    keys = NodeKeys.load_or_create(tmp_path / "cluster")  # one cluster: one store key and signer
    dirs = tuple(BackendSpec(f"b{i:02d}", "local", path=tmp_path / "backends" / f"{i:02d}") for i in range(20))
    stores: list[QSS] = []
    nodes: list[Node] = []
    try:
        for i in range(count):
            store = await open_qss(tmp_path / f"n{i}", keys, local_backends=0, backends=dirs)
            stores.append(store)
            own = NodeKeys.load_or_create(tmp_path / f"n{i}")
            node = Node(store, ScriptedLLM(), Recorder, node_id=own.node_id, idle_after_s=60,
                        directory=LocalDirectory(service, ttl_s=TTL_S), member=True)
            await node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in nodes:
            node.directory.cut = False
            await node.aclose()
        for store in stores:
            await store.aclose()


async def test_concurrent_activations_across_nodes_give_one(tmp_path: Path) -> None:
    async with cluster(tmp_path, 3) as nodes:
        agent = new_agent()

        async def send(i: int) -> str:
            try:
                return await (await nodes[i % 3].deliver(agent, ChatMessage(f"m{i}"))).text()
            except LeaseHeld as exc:
                return f"held by {exc.owner}"

        answers = await asyncio.gather(*(send(i) for i in range(16)))
        assert sum(n.stats.activations for n in nodes) == 1
        host = next(n for n in nodes if n.is_active(agent))
        assert {a for a in answers if a.startswith("held")} == {f"held by {host.node_id}"}


async def test_a_dead_nodes_agent_wakes_elsewhere_with_its_history_and_its_stale_write_is_refused(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path, 2) as (a, b):
        agent = new_agent()
        assert await (await a.deliver(agent, ChatMessage("hello"))).text() == "echo hello"
        with pytest.raises(LeaseHeld):
            await b.deliver(agent, ChatMessage("not yet"))
        stale = a.leases.holds(agent)
        assert stale is not None
        a.directory.cut = True  # node a is partitioned: it cannot renew
        await asyncio.sleep(TTL_S + 0.6)
        assert not a.is_active(agent)  # a dropped it when its lease ran out, unwritten
        with pytest.raises(Unavailable):
            await a.deliver(agent, ChatMessage("from the wrong side"))  # never served from a stale copy
        assert await (await b.deliver(agent, ChatMessage("again"))).text() == "echo again"
        assert [e.content for e in await history(b, agent)] == ["hello", "echo hello", "again", "echo again"]
        with pytest.raises(StaleEpoch):  # a write a's turn had in flight cannot land over b's
            await a.store.put(state_key(agent), b"{}", epoch=stale.epoch)


async def test_a_timer_of_a_dead_node_fires_on_another(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2) as (a, b):
        agent = new_agent()
        await (await a.deliver(agent, ChatMessage(f"timer {TTL_S + 1.5} wake"))).text()
        assert await a.hibernate(agent) and a.leases.holds(agent) is not None  # asleep, held for its timer
        with pytest.raises(LeaseHeld):
            await b.deliver(agent, ChatMessage("who has it"))
        a.directory.cut = True  # a dies: its timer must fire on b
        for _ in range(60):
            await asyncio.sleep(0.1)
            if b.stats.timers_fired:
                break
        assert b.stats.timers_fired == 1 and a.stats.timers_fired == 0
        assert [e.content for e in await history(b, agent)][-1] == "timer wake"


class CountingVerifier:
    """The runtime's spec verifier seam, counting who asks: a default spec is made by whoever verifies first."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def verify(self, agent_id: str) -> None:
        self.asked.append(agent_id)
        await asyncio.sleep(0.01)  # a store round trip: the other nodes' first events arrive meanwhile


async def test_only_the_node_that_wins_the_lease_verifies_the_agents_spec(tmp_path: Path) -> None:
    async with cluster(tmp_path, 3) as nodes:
        verifiers = [CountingVerifier() for _ in nodes]
        for node, verifier in zip(nodes, verifiers, strict=True):
            node._activations._verifier = verifier
        agent = new_agent()

        async def send(i: int) -> None:
            with contextlib.suppress(LeaseHeld):
                await (await nodes[i % 3].deliver(agent, ChatMessage(f"m{i}"))).text()

        await asyncio.gather(*(send(i) for i in range(16)))
        host = next(i for i, n in enumerate(nodes) if n.is_active(agent))
        assert [len(v.asked) for v in verifiers] == [1 if i == host else 0 for i in range(3)]
