"""A cluster whose store is a set of `hero storage serve` fragment servers (no directory shared between nodes):
a node started with an empty data dir serves an existing agent from them, and when that node is killed the
agent answers from another node with its whole history. The servers hold ciphertext only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from tests.cluster.raycluster import KEY, HeroNode, RayCluster, chat, hero, reply_text
from tests.cluster.test_ray_cluster import messages, served_by
from tests.conftest import ROOT, free_port

TTL_S = 3.0
IDLE_S = 4.0
SERVERS = 3  # k=2 + m=1


@contextmanager
def fragment_server(directory: Path, cluster_id: str, location: str) -> Iterator[str]:
    """A `hero storage serve` process trusting the cluster; its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hero.cli", "storage", "serve", "--dir", str(directory), "--port", str(port),
         "--location", location, "--trust", cluster_id, "--no-fsync"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "fragment server on" in line, line
        deadline = time.monotonic() + 20
        while True:  # listening once it prints; uvicorn binds right after
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "fragment server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_nodes_share_the_store_through_fragment_servers_an_empty_node_serves_and_failover_works(
        tmp_path: Path) -> None:
    key = KEY
    key_file = tmp_path / "cluster.key"
    key.write(key_file)
    nodes: list[HeroNode] = []
    with ExitStack() as stack:
        urls = [stack.enter_context(fragment_server(tmp_path / f"server{i}", key.cluster_id, f"site-{i}"))
                for i in range(SERVERS)]
        storage = "k = 2\nm = 1\nlocal_backends = 0\nfsync = false\n\n" + "".join(
            f'[[backend]]\nurl = "{url}"\nlocation = "site-{i}"\nname = "server-{i}"\n\n' for i, url in enumerate(urls))
        ray = stack.enter_context(RayCluster(key, nodes=1, watts=400.0))

        def start(name: str, **kwargs: object) -> HeroNode:
            node = HeroNode(tmp_path, name, ray.address, key_file, tmp_path / "unused", ttl_s=TTL_S,
                            idle_after_s=IDLE_S, storage=storage, **kwargs)  # type: ignore[arg-type]
            nodes.append(node)
            node.wait_ready()
            time.sleep(TTL_S / 3 + 0.3)  # the others have its heartbeat
            return node

        try:
            a = start("a")
            port = free_port()
            user = hero("user", "add", "roamer", "--data", str(a.data), "--home", f"{os.uname().nodename}:{port}",
                        key_file=key_file)
            first = chat(a, user["token"], "remember me")  # its home is not up yet: a hosts it
            assert (first.status_code, served_by(first)) == (200, a.node_id), first.text
            fresh = start("fresh", port=port)  # an empty data dir: its config, nothing else
            operator = next(line.split("token=")[1] for line in a.lines if "Dashboard:" in line)
            deadline = time.monotonic() + IDLE_S + TTL_S + 15
            named = (f"{os.uname().nodename}:{port}", fresh.url)
            while time.monotonic() < deadline:  # it sleeps on a (then it wakes at home), and a sees its home
                shown = httpx.get(a.url + "/api/node/cluster", headers={"Authorization": f"Bearer {operator}"},
                                  trust_env=False, timeout=30).json()
                home = next((n for n in shown["nodes"] if n["node_id"] == fresh.node_id), None)
                asleep = not any(user["agent_id"] in n["agents"] for n in shown["nodes"])
                if asleep and home is not None and (home.get("name"), home.get("url")) == named:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"the agent did not go to sleep on a, or a does not see its home: {shown}")
            again = chat(a, user["token"], "it is me")
            assert (again.status_code, served_by(again), reply_text(again)) == (200, fresh.node_id, "echo it is me")
            assert messages(fresh, user["token"])[:2] == ["remember me", "echo remember me"]

            fresh.kill()  # kill -9 of the node hosting it: a takes over from the fragment servers
            started = time.monotonic()
            after = chat(a, user["token"], "still there?")
            assert (after.status_code, served_by(after)) == (200, a.node_id), after.text
            assert time.monotonic() - started <= TTL_S + 1.0 + 5.0  # the bound, plus a loaded machine
            history = messages(a, user["token"])
            assert "remember me" in history and "it is me" in history and history[-1] == "echo still there?"
        finally:
            for node in nodes:
                node.stop()
    for i in range(SERVERS):  # every server holds fragments, none of them readable
        stored = [path for path in (tmp_path / f"server{i}").rglob("*") if path.is_file()]
        assert stored and not any(b"remember me" in path.read_bytes() for path in stored)
