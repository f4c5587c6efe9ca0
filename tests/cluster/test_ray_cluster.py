"""Hero on a real Ray cluster: `hero up --ray` processes on one machine (one Ray head, token auth on), sharing
one store. Any node serves any user; one activation per agent; tokens valid cluster-wide; failover after
kill -9; a dead node's timers fire elsewhere; an empty node serves an existing agent; clear 503s."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import psutil
import pytest

from hero.cluster.key import ClusterKey
from hero.identity import NodeKeys
from hero.store.qss import open_qss
from tests.cluster.raycluster import KEY, HeroNode, RayCluster, chat, hero, reply_text
from tests.conftest import free_port

TTL_S = 3.0
IDLE_S = 4.0  # agents sleep after this (so a sleeping agent can wake on another node)


@dataclass
class Cluster:
    ray: RayCluster
    key_file: Path
    tmp: Path
    nodes: dict[str, HeroNode]

    def start(self, name: str, **kwargs: Any) -> HeroNode:
        node = HeroNode(self.tmp, name, self.ray.address, self.key_file, self.tmp / "backends", ttl_s=TTL_S,
                        idle_after_s=IDLE_S, **kwargs)
        self.nodes[name] = node
        node.wait_ready()
        deadline = time.monotonic() + 10
        while "a" in self.nodes and node.node_id not in {n["node_id"] for n in self.view()} \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(TTL_S / 3 + 0.3)  # every node renewed since: it is in their view too
        return node

    def user(self, name: str, *, home: str | None = None) -> dict[str, str]:
        """A new user, added with `hero user add` on node a's data dir (the registry is in the shared store)."""
        return dict(hero("user", "add", name, "--data", str(self.nodes["a"].data), *(["--home", home] if home else []),
                         key_file=self.key_file))

    def status(self) -> list[dict[str, Any]]:
        answer = hero("cluster", "status", "--ray", self.ray.address, key_file=self.key_file)
        return list(answer["nodes"])

    def view(self, name: str = "a") -> list[dict[str, Any]]:
        """The live nodes as node `name` sees them (its dashboard's view, cheaper than `hero cluster status`):
        itself as it is now, the others as of its last renewal."""
        node = self.nodes[name]
        operator = next(line.split("token=")[1] for line in self.nodes["a"].lines if "Dashboard:" in line)
        shown = httpx.get(node.url + "/api/node/cluster", headers={"Authorization": f"Bearer {operator}"},
                          trust_env=False, timeout=30)
        assert shown.status_code == 200, shown.text
        return list(shown.json()["nodes"])

    def own(self, name: str) -> dict[str, Any]:
        """What node `name` says of itself now (its agents, whether it is over budget)."""
        node_id = self.nodes[name].node_id
        return next(n for n in self.view(name) if n["node_id"] == node_id)

    def holders(self, agent_id: str) -> list[str]:
        """The nodes that hold the agent now, each asked of itself."""
        return [n.name for n in self.nodes.values() if agent_id in self.own(n.name)["agents"]]

    def by_id(self, node_id: str) -> HeroNode:
        return next(n for n in self.nodes.values() if n.node_id == node_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("ray")
    KEY.write(tmp / "cluster.key")
    with RayCluster(KEY, nodes=2, watts=200.0) as ray:
        found = Cluster(ray, tmp / "cluster.key", tmp, {})
        try:
            for name in "abc":
                found.start(name)
            yield found
        finally:
            for node in found.nodes.values():
                node.stop()


def served_by(response: httpx.Response) -> str:
    return response.headers["x-hero-node"]


def messages(node: HeroNode, token: str) -> list[str]:
    response = httpx.get(node.url + "/api/me/messages?limit=500", headers={"Authorization": f"Bearer {token}"},
                         timeout=60, trust_env=False)
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["messages"]]


def test_any_node_serves_any_user_from_the_node_hosting_the_agent(cluster: Cluster) -> None:
    user = cluster.user("routed")
    first = chat(cluster.nodes["a"], user["token"], "one")
    assert first.status_code == 200 and reply_text(first) == "echo one"
    host = served_by(first)
    for node in cluster.nodes.values():  # through every node: the host answers, a stream too
        plain = chat(node, user["token"], f"via {node.name}")
        assert (plain.status_code, served_by(plain), reply_text(plain)) == (200, host, f"echo via {node.name}")
        streamed = chat(node, user["token"], f"stream via {node.name}", stream=True)
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert (served_by(streamed), reply_text(streamed)) == (host, f"echo stream via {node.name}")
        assert streamed.text.rstrip().endswith("data: [DONE]")
    other = next(n for n in cluster.nodes.values() if n.node_id != host)
    assert messages(other, user["token"])[:2] == ["one", "echo one"]
    status = cluster.status()  # hero cluster status --ray ADDRESS --json
    listed = {n["node_id"]: n["agents"] for n in status}
    assert [node for node, agents in listed.items() if user["agent_id"] in agents] == [host]
    assert set(listed) == {n.node_id for n in cluster.nodes.values()}
    assert all(isinstance(n["watts"], float | int) and n["url"] for n in status)
    operator = next(line.split("token=")[1] for line in cluster.nodes["a"].lines if "Dashboard:" in line)
    deadline = time.monotonic() + 15  # another node's view follows the host's heartbeats (every ttl/3)
    while True:
        shown = httpx.get(other.url + "/api/node/cluster", headers={"Authorization": f"Bearer {operator}"},
                          trust_env=False, timeout=30).json()  # what the dashboard's cluster card shows
        seen = {n["node_id"]: n["agents"] for n in shown["nodes"]}.get(host)
        if seen == listed[host] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown["node_id"] == other.node_id
    assert seen == listed[host]


def test_a_routing_marker_a_client_sets_is_ignored(cluster: Cluster) -> None:
    user = cluster.user("sneaky")
    host = served_by(chat(cluster.nodes["a"], user["token"], "one"))
    other = next(n for n in cluster.nodes.values() if n.node_id != host)
    body = {"model": "hero", "messages": [{"role": "user", "content": "here, please"}]}
    for forged in (other.node_id, f"{host}.{int(time.time() * 1000)}.{'0' * 64}"):  # a client cannot skip placement
        response = httpx.post(other.url + "/v1/chat/completions", json=body, timeout=60, trust_env=False,
                              headers={"Authorization": f"Bearer {user['token']}", "x-hero-routed": forged})
        assert (response.status_code, served_by(response)) == (200, host), response.text
    assert cluster.holders(user["agent_id"]) == [cluster.by_id(host).name]


def test_the_dashboard_shows_the_clusters_nodes(cluster: Cluster) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.test_browser import ARGS, CHROMIUM

    a = cluster.nodes["a"]
    operator = next(line.split("token=")[1] for line in a.lines if "Dashboard:" in line)
    live = cluster.view()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{a.url}/dashboard?token={operator}")
            card = page.get_by_role("region", name="Cluster nodes")
            expect(card).to_be_visible(timeout=20_000)
            rows = card.locator("tbody tr")
            expect(rows).to_have_count(len(live))
            expect(rows.filter(has_text="(this node)")).to_have_count(1)
            for node in cluster.nodes.values():
                expect(card).to_contain_text(node.url.removeprefix("http://"))
            assert errors == []
        finally:
            browser.close()


RESOURCES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while not any(sys.argv[2] in n["Resources"] for n in ray.nodes() if n["Alive"]) and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({"nodes": [n["Resources"] for n in ray.nodes() if n["Alive"]],
                  "total": ray.cluster_resources(), "available": ray.available_resources()}))
"""


def test_ray_nodes_carry_their_hardware_profile_and_power_budget_and_host_actors_use_them(cluster: Cluster) -> None:
    import subprocess
    import sys

    from hero.cluster.resources import WATTS, node_resources, profile_resource
    from hero.power.profiles import load_profile
    from tests.conftest import ROOT

    small, default = load_profile("sbc-15w"), load_profile()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HERO_CLUSTER_KEY": str(cluster.key_file)}
    host = cluster.ray.address.rpartition(":")[0]
    joined = subprocess.Popen(  # a Ray node for a 15 W board, as an operator starts it
        [sys.executable, "-m", "hero.cli", "cluster", "ray-start", "--address", cluster.ray.address, "--profile",
         "sbc-15w", "--block", "--", "--num-cpus=0", f"--node-ip-address={host}", "--object-store-memory=80000000"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        done = subprocess.run([sys.executable, "-c", RESOURCES, cluster.ray.address, profile_resource(small)],
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.killpg(joined.pid, signal.SIGTERM)
        joined.wait(timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert node_resources(small) == {WATTS: 15.0, "hero_profile:sbc-15w": 1.0}
    assert any(r.get(WATTS) == 15.0 and r.get("hero_profile:sbc-15w") == 1.0 for r in seen["nodes"]), seen["nodes"]
    hosts = len(cluster.view())  # every live Hero node's host actor holds its budget and its profile
    total, available = seen["total"], seen["available"]
    assert total[WATTS] - available[WATTS] == pytest.approx(hosts * default.budget_w)
    assert total[profile_resource(default)] - available[profile_resource(default)] == pytest.approx(hosts * 0.001)


def test_the_event_stream_through_another_node_gets_the_agents_messages(cluster: Cluster) -> None:
    user = cluster.user("listener")
    host = served_by(chat(cluster.nodes["a"], user["token"], "hello"))
    listen = next(n for n in cluster.nodes.values() if n.node_id != host)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def read() -> None:
        with httpx.stream("GET", listen.url + "/api/me/events?last_event_id=2", timeout=30, trust_env=False,
                          headers={"Authorization": f"Bearer {user['token']}"}) as stream:
            assert stream.headers["x-hero-node"] == host
            for line in stream.iter_lines():
                if line.startswith("event: ready"):
                    ready.set()
                if line.startswith("data: {") and '"content"' in line:
                    seen.append(json.loads(line[6:]))
                    if len(seen) == 2:
                        return

    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(read)
        assert ready.wait(30)
        sender = next(n for n in cluster.nodes.values() if n not in (listen,))
        assert chat(sender, user["token"], "ping").status_code == 200
        reader.result(timeout=30)
    assert [m["content"] for m in seen] == ["ping", "echo ping"]


def test_a_token_from_one_node_works_on_every_node_and_its_revocation_anywhere_counts_everywhere(
    cluster: Cluster,
) -> None:
    user = cluster.user("signin")
    a, b, c = (cluster.nodes[n] for n in "abc")
    challenge = httpx.post(a.url + "/api/auth/challenge", json={"agent_id": user["agent_id"]}, trust_env=False)
    text = challenge.json()["challenge"]
    signature = nacl.signing.SigningKey(bytes.fromhex(user["secret_key"])).sign(text.encode()).signature.hex()
    login = httpx.post(a.url + "/api/auth/login", json={"challenge": text, "signature": signature}, trust_env=False)
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    me = httpx.get(b.url + "/api/me", headers={"Authorization": f"Bearer {token}"}, trust_env=False)
    assert me.status_code == 200 and me.json()["agent_id"] == user["agent_id"]
    out = httpx.post(b.url + "/api/auth/logout", headers={"Authorization": f"Bearer {token}"}, trust_env=False)
    assert out.status_code == 204
    for node in (a, c):
        refused = chat(node, token, "still me?")
        assert refused.status_code == 401, refused.text
    assert chat(a, user["token"], "other token").status_code == 200  # only that token was revoked


def test_forged_and_foreign_cluster_tokens_are_401(cluster: Cluster) -> None:
    user = cluster.user("victim")
    foreign = ClusterKey.generate().shared_keys(NodeKeys.load_or_create(cluster.tmp / "stranger"))
    stranger, _ = foreign.issue_token(sub=user["agent_id"], name="victim", role="user", ttl=600)
    prefix, payload, sig = user["token"].split(".")
    forged = f"{prefix}.{payload[:-4]}AAAA.{sig}"
    for node in cluster.nodes.values():
        for token in (stranger, forged):
            response = chat(node, token, "let me in")
            assert response.status_code == 401 and response.json()["error"]["type"], response.text


def test_sixteen_concurrent_first_messages_across_nodes_give_one_activation(cluster: Cluster) -> None:
    user = cluster.user("crowd")
    nodes = list(cluster.nodes.values())
    operator = next(line.split("token=")[1] for line in nodes[0].lines if "Dashboard:" in line)

    def activations() -> int:
        total = 0
        for node in nodes:
            status = httpx.get(node.url + "/api/node/status", headers={"Authorization": f"Bearer {operator}"},
                               trust_env=False, timeout=30)
            total += status.json()["runtime"]["activations"]
        return total

    before = activations()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: chat(nodes[i % len(nodes)], user["token"], f"m{i}"), range(16)))
    assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers if a.status_code != 200]
    assert sorted(reply_text(a) for a in answers) == sorted(f"echo m{i}" for i in range(16))
    assert len({served_by(a) for a in answers}) == 1
    assert activations() - before == 1
    assert len(messages(nodes[1], user["token"])) == 32  # every turn's writes landed


def test_a_frozen_host_is_not_waited_for_the_agent_answers_from_another_node(cluster: Cluster) -> None:
    c = cluster.nodes["c"]
    user = cluster.user("frozen", home=f"{os.uname().nodename}:{c.port}")
    assert served_by(chat(cluster.nodes["a"], user["token"], "before")) == c.node_id
    assert c.pid is not None
    os.kill(c.pid, signal.SIGSTOP)  # alive to the kernel (its socket still accepts), silent to everyone
    try:
        started = time.monotonic()
        again = chat(cluster.nodes["a"], user["token"], "after")
        took = time.monotonic() - started
    finally:
        os.kill(c.pid, signal.SIGCONT)
    assert (again.status_code, reply_text(again)) == (200, "echo after"), again.text
    assert served_by(again) != c.node_id
    assert took <= TTL_S + TTL_S / 3 + 2.0  # its lease lapses, this node's view drops it at its next renewal
    assert messages(cluster.nodes["a"], user["token"]) == ["before", "echo before", "after", "echo after"]
    deadline = time.monotonic() + 3 * TTL_S
    while c.node_id not in {n["node_id"] for n in cluster.view()} and time.monotonic() < deadline:
        time.sleep(0.3)  # thawed, it renews and rejoins (having lost the agent)
    assert c.node_id in {n["node_id"] for n in cluster.view()}
    assert reply_text(chat(c, user["token"], "thawed")) == "echo thawed"  # it serves again, from wherever it runs


def test_a_node_over_its_power_budget_gets_no_new_agents_and_hands_its_idle_ones_off(cluster: Cluster) -> None:
    base = (Path(__file__).resolve().parents[2] / "hardware" / "zos-edge-60w.toml").read_text()
    profile = cluster.tmp / "hot.toml"  # its budget is below what it draws idle: always over
    profile.write_text("\n".join(line for line in base.splitlines() if not line.startswith("budget_w"))
                       + "\nbudget_w = " + str(_idle_w(base) + 0.5) + "\n")
    hot = cluster.start("hot", settings=f'profile = "{profile}"', power="early_hibernate_after_s = 1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            n["node_id"] == hot.node_id and n.get("over_budget") for n in cluster.view()):  # as the others see it
        time.sleep(0.5)
    newcomer = cluster.user("newcomer")
    assert served_by(chat(hot, newcomer["token"], "hi")) != hot.node_id  # placed where there is headroom
    settler = cluster.user("settler")
    direct = httpx.post(hot.url + "/v1/chat/completions", trust_env=False, timeout=60, json={
        "model": "hero", "messages": [{"role": "user", "content": "here"}]},
        headers={"Authorization": f"Bearer {settler['token']}", "x-hero-routed": routed(
            cluster, "POST", "/v1/chat/completions", settler["agent_id"])})  # as a gateway sends it: answered here
    assert (direct.status_code, served_by(direct)) == (200, hot.node_id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and settler["agent_id"] in cluster.own("hot")["agents"]:
        time.sleep(0.5)  # idle on a node over its budget: hibernated early, its lease given back
    moved = chat(hot, settler["token"], "where now?")
    assert (moved.status_code, reply_text(moved)) == (200, "echo where now?")
    assert served_by(moved) != hot.node_id
    assert messages(hot, settler["token"]) == ["here", "echo here", "where now?", "echo where now?"]
    hot.stop()
    del cluster.nodes["hot"]


def routed(cluster: Cluster, method: str, path: str, agent_id: str) -> str:
    """The routing marker a gateway of the cluster puts on a request it sends on."""
    from hero.web.routemark import RouteMarker

    key = ClusterKey.load(cluster.key_file).derive("hero-cluster/gateway-route")
    return RouteMarker(key, "test").make(method, path, agent_id).decode()


def _idle_w(profile: str) -> float:
    return float(next(line.split("=")[1] for line in profile.splitlines() if line.startswith("idle_w")))


def test_kill_9_of_the_host_the_agent_answers_from_another_node_with_its_history_and_its_timer_fires(
    cluster: Cluster,
) -> None:
    b = cluster.nodes["b"]
    home = f"{os.uname().nodename}:{b.port}"  # the node's name in the cluster
    talker, sleeper = cluster.user("talker", home=home), cluster.user("sleeper", home=home)
    for i in range(3):
        assert served_by(chat(cluster.nodes["a"], talker["token"], f"t{i}")) == b.node_id  # its pinned home
    timer = chat(cluster.nodes["c"], sleeper["token"], f"timer {TTL_S + 4} wake")
    assert served_by(timer) == b.node_id
    assert cluster.holders(talker["agent_id"]) == ["b"]
    b.kill()
    killed = time.monotonic()
    del cluster.nodes["b"]
    again = chat(cluster.nodes["a"], talker["token"], "are you there?")
    failover_s = time.monotonic() - killed
    assert again.status_code == 200, again.text
    assert served_by(again) != b.node_id and reply_text(again) == "echo are you there?"
    assert failover_s <= TTL_S + 1.0
    assert messages(cluster.nodes["c"], talker["token"]) == [
        "t0", "echo t0", "t1", "echo t1", "t2", "echo t2", "are you there?", "echo are you there?"]
    deadline = time.monotonic() + TTL_S + 10
    while time.monotonic() < deadline and "timer wake" not in messages(cluster.nodes["a"], sleeper["token"]):
        time.sleep(0.5)
    assert messages(cluster.nodes["a"], sleeper["token"])[-1] == "timer wake"


async def test_the_dead_owners_epoch_can_no_longer_write(cluster: Cluster, tmp_path: Path) -> None:
    """After a failover the store refuses a write under the old owner's epoch (fencing), keeping the new owner's."""
    import shutil

    from hero.errors import StaleEpoch
    from hero.runtime.keys import state_key

    user = cluster.user("fenced")
    a = cluster.nodes["a"]
    assert chat(a, user["token"], "before").status_code == 200
    keys = ClusterKey.load(cluster.key_file).shared_keys(NodeKeys.load_or_create(tmp_path))
    shutil.copy(a.data / "storage.toml", tmp_path / "storage.toml")  # the cluster's shared backends
    store = await open_qss(tmp_path, keys)
    try:
        head = await store.head(state_key(user["agent_id"]))
        assert head is not None
        with pytest.raises(StaleEpoch):
            await store.put(state_key(user["agent_id"]), b"{}", epoch=head.epoch - 1)
    finally:
        await store.aclose()
    assert messages(a, user["token"]) == ["before", "echo before"]


def test_a_node_with_an_empty_data_dir_serves_an_existing_agent(cluster: Cluster) -> None:
    port = free_port()
    user = cluster.user("mover", home=f"{os.uname().nodename}:{port}")
    assert chat(cluster.nodes["a"], user["token"], "remember me").status_code == 200  # its home is not up yet
    fresh = cluster.start("fresh", port=port)  # a new data dir: its config, nothing else
    deadline = time.monotonic() + IDLE_S + TTL_S + 10
    while cluster.holders(user["agent_id"]) and time.monotonic() < deadline:
        time.sleep(0.5)  # it sleeps where it is, then wakes at home
    again = chat(cluster.nodes["a"], user["token"], "it is me")
    assert (again.status_code, served_by(again)) == (200, fresh.node_id)
    assert messages(fresh, user["token"]) == ["remember me", "echo remember me", "it is me", "echo it is me"]


def test_a_host_nobody_can_reach_is_a_503_with_retry_after_within_the_bound(cluster: Cluster) -> None:
    port = free_port()
    user = cluster.user("walled", home=f"{os.uname().nodename}:{port}")
    walled = cluster.start("walled", port=port, cluster_url="http://127.0.0.1:9")  # its peers cannot reach it
    assert served_by(chat(walled, user["token"], "inside")) == walled.node_id
    started = time.monotonic()
    response = chat(cluster.nodes["a"], user["token"], "from outside")
    took = time.monotonic() - started
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1, response.text
    assert "does not answer" in response.json()["error"]["message"]
    assert took <= TTL_S + 1.0 + 2.0  # the bound, plus the directory's 2 s check of the host


def test_a_node_that_cannot_reach_the_cluster_says_so_with_a_503(cluster: Cluster) -> None:
    user = cluster.user("cutoff")
    raylets = [node.all_processes["raylet"][0].process.pid for node in cluster.ray.cluster.list_all_nodes()]
    directory = [p for raylet in raylets for p in psutil.Process(raylet).children(recursive=True)
                 if "_DirectoryActor" in " ".join(p.cmdline())]  # on whichever Ray node it runs
    assert len(directory) == 1
    directory[0].send_signal(signal.SIGSTOP)
    try:
        response = chat(cluster.nodes["a"], user["token"], "anyone?")
    finally:
        directory[0].send_signal(signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert "cluster directory" in response.json()["error"]["message"] and response.headers["retry-after"]


def test_the_cluster_refuses_a_process_without_its_key(cluster: Cluster) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    other = cluster.tmp / "other.key"
    ClusterKey.generate().write(other)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "HERO_CLUSTER"))}
    for args in (["cluster", "status", "--ray", cluster.ray.address, "--cluster-key", str(other)],
                 ["up", "--ray", cluster.ray.address, "--data", str(cluster.tmp / "keyless"), "--no-overlay"]):
        done = subprocess.run([sys.executable, "-m", "hero.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
        assert ("cannot join the Ray cluster at " + cluster.ray.address in done.stderr
                or "needs the cluster's key" in done.stderr), done.stderr
