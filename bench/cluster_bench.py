"""Cluster benchmark: a routed request beside a local one, activation through the cluster directory beside the
embedded one, failover time after kill -9, and a host actor's memory and idle CPU with 200 agents.

    .venv/bin/python bench/cluster_bench.py [--quick]

A real local Ray cluster (one Ray node, token auth on) and real `hero up --ray` processes on this machine,
sharing one store (the helpers of tests/cluster/raycluster.py); the nodes run the deterministic test agent
(tests/cluster/agent.py), so the figures are the cluster's, not the model's. Prints one line per figure, each
with its target; ratios are against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hero.clibase import open_users  # noqa: E402
from hero.cluster.connect import connect, disconnect  # noqa: E402
from hero.cluster.key import ClusterKey  # noqa: E402
from hero.config import NodeConfig  # noqa: E402
from hero.identity import NodeKeys, UserKey  # noqa: E402
from hero.runtime.directory import Directory  # noqa: E402
from hero.runtime.events import Ping  # noqa: E402
from hero.runtime.node import Node  # noqa: E402
from hero.runtime.ray_directory import RayDirectory  # noqa: E402
from hero.seams.directory import LeaseDirectory  # noqa: E402
from hero.server import open_store  # noqa: E402
from tests.cluster.agent import Echo  # noqa: E402
from tests.cluster.raycluster import HeroNode, RayCluster, reply_text  # noqa: E402

TTL_S = 3.0  # the failover nodes' lease ttl; the idle host runs with the default (30 s)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def user_tokens(data: Path, count: int, *, home: str | None = None) -> list[str]:
    """`count` new users in the cluster's registry (as `hero user add --data DATA [--home NODE]` adds them)."""
    with open_users(data) as users:
        return [users.issue(users.add(f"u{secrets.token_hex(4)}", UserKey.generate().agent_id, home=home))[0]
                for _ in range(count)]


def timed_chat(client: httpx.Client, node: HeroNode, token: str, text: str) -> tuple[float, str, str]:
    """One chat request through `node`."""
    body = {"model": "hero", "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    response = client.post(node.url + "/v1/chat/completions", json=body, headers=headers)
    took = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return took, response.headers["x-hero-node"], reply_text(response)


def routed_overhead(nodes: list[HeroNode], rounds: int) -> None:
    [token] = user_tokens(nodes[0].data, 1)
    with httpx.Client(trust_env=False, timeout=60) as client:
        _, host_id, _ = timed_chat(client, nodes[0], token, "warm")
        host = next(n for n in nodes if n.node_id == host_id)
        other = next(n for n in nodes if n.node_id != host_id)
        for _ in range(5):
            timed_chat(client, other, token, "warm")
        local, routed = [], []
        for i in range(rounds):  # alternately, so drift hits both alike
            local.append(timed_chat(client, host, token, f"l{i}")[0])
            took, served, _ = timed_chat(client, other, token, f"r{i}")
            assert served == host_id
            routed.append(took)
    overhead = (pct(routed, 50) - pct(local, 50)) * 1e3
    print(f"(a) chat request, n={rounds}: local p50 {pct(local, 50) * 1e3:.2f} ms, routed through another node p50 "
          f"{pct(routed, 50) * 1e3:.2f} ms (p99 {pct(routed, 99) * 1e3:.2f}); overhead {overhead:.2f} ms, "
          f"ratio {pct(routed, 50) / pct(local, 50):.2f}x  [target overhead <= 5 ms]")


async def activations(directory: LeaseDirectory, data: Path, agents: int) -> list[float]:
    keys = NodeKeys.load_or_create(data)
    store = await open_store(NodeConfig(data_dir=data), keys)
    node = Node(store, None, Echo, node_id=keys.node_id, idle_after_s=3600, directory=directory,
                member=not isinstance(directory, Directory))
    await node.start()
    took = []
    try:
        for _ in range(agents):
            agent = UserKey.generate().agent_id
            started = time.perf_counter()
            reply = await node.deliver(agent, Ping())
            await reply.wait_accepted()
            took.append(time.perf_counter() - started)
    finally:
        await node.aclose()
        await store.aclose()
    return took


def activation_latency(ray: RayCluster, key: ClusterKey, scratch: Path, agents: int) -> None:
    connect(ray.address, key)
    try:
        embedded = asyncio.run(activations(Directory(ttl_s=30), scratch / "embedded", agents))
        cluster = asyncio.run(activations(RayDirectory.connect(key.cluster_id, ttl_s=30), scratch / "ray", agents))
    finally:
        disconnect()
    print(f"(b) activate a new agent, n={agents}: embedded directory p50 {pct(embedded, 50) * 1e3:.2f} ms, cluster "
          f"directory p50 {pct(cluster, 50) * 1e3:.2f} ms (p99 {pct(cluster, 99) * 1e3:.2f}); "
          f"ratio {pct(cluster, 50) / pct(embedded, 50):.2f}x")


def host_cost(hosts: dict[str, HeroNode], agents: int, seconds: float, windows: int) -> None:
    """Each host actor's memory with `agents` resident agents, and its idle CPU: all hosts sampled over the same
    windows (so the machine's load hits them alike), empty first, then with their agents."""
    actors = {name: psutil.Process(host.pid or 0) for name, host in hosts.items()}
    empty = cpu_shares(actors, seconds, windows)
    uss_before = {name: actor.memory_full_info().uss for name, actor in actors.items()}
    with httpx.Client(trust_env=False, timeout=120) as client:
        for host in hosts.values():
            home = f"{os.uname().nodename}:{host.port}"
            for token in user_tokens(host.data, agents, home=home):  # each agent activates on its home
                assert timed_chat(client, host, token, "hello " * 20)[1] == host.node_id
    busy = cpu_shares(actors, seconds, windows)
    for name, actor in actors.items():
        uss = actor.memory_full_info().uss
        print(f"(c) host actor ({name}) with {agents} resident agents: USS {uss / 2**20:.0f} MiB "
              f"(+{(uss - uss_before[name]) / agents / 1024:.1f} KiB per agent); idle CPU median "
              f"{median(busy[name]):.2f} % of a core over {windows} x {seconds:.0f} s "
              f"({' / '.join(f'{v:.2f}' for v in busy[name])}; empty node {median(empty[name]):.2f} %)  "
              "[target <= 1 %]")


def cpu_shares(actors: dict[str, psutil.Process], seconds: float, windows: int) -> dict[str, list[float]]:
    """% of a core each process used in each of `windows` windows of `seconds`, all sampled over the same windows."""
    shares: dict[str, list[float]] = {name: [] for name in actors}
    for _ in range(windows):
        before = {name: sum(actor.cpu_times()[:2]) for name, actor in actors.items()}
        time.sleep(seconds)
        for name, actor in actors.items():
            shares[name].append((sum(actor.cpu_times()[:2]) - before[name]) / seconds * 100)
    return shares


def failover(nodes: list[HeroNode]) -> None:
    [token] = user_tokens(nodes[0].data, 1)
    with httpx.Client(trust_env=False, timeout=60) as client:
        _, host_id, _ = timed_chat(client, nodes[0], token, "before")
        host = next(n for n in nodes if n.node_id == host_id)
        other = next(n for n in nodes if n.node_id != host_id)
        host.kill()
        killed = time.perf_counter()
        _, served, text = timed_chat(client, other, token, "after")
        took = time.perf_counter() - killed
    assert served != host_id and text == "echo after"
    print(f"(d) failover: kill -9 of the hosting node to the agent's next answer from another node {took:.2f} s, "
          f"lease ttl {TTL_S:g} s  [target <= ttl + 1 s = {TTL_S + 1:g} s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds, agents, seconds, windows = (30, 50, 5.0, 1) if args.quick else (200, 200, 30.0, 4)
    key = ClusterKey.generate()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key.write(tmp / "cluster.key")
        with RayCluster(key, nodes=1, watts=500.0) as ray:
            print(f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
                  f"Ray head at {ray.address}")
            nodes: list[HeroNode] = []
            try:
                for name in ("a", "b"):
                    nodes.append(HeroNode(tmp, name, ray.address, tmp / "cluster.key", tmp / "backends",
                                          ttl_s=TTL_S).wait_ready())
                routed_overhead(nodes, rounds)
                hosts: dict[str, HeroNode] = {}
                try:  # Hero's quiet Ray worker settings beside Ray's defaults (HERO_RAY_QUIET=0)
                    for name, quiet in (("quiet", "1"), ("ray defaults", "0")):
                        os.environ["HERO_RAY_QUIET"] = quiet
                        hosts[name] = HeroNode(tmp, name.replace(" ", "-"), ray.address, tmp / "cluster.key",
                                               tmp / "backends", ttl_s=30.0).wait_ready()
                    os.environ.pop("HERO_RAY_QUIET")
                    host_cost(hosts, agents, seconds, windows)
                finally:
                    for host in hosts.values():
                        host.stop()
                activation_latency(ray, key, tmp / "scratch", min(agents, 100))
                failover(nodes)
            finally:
                for node in nodes:
                    node.stop()


if __name__ == "__main__":
    main()
