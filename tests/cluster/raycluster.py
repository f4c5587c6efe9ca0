"""A real local Ray cluster (token authentication on) and real `hero up --ray` nodes on it, started and stopped
by the tests: several Ray nodes on this machine, and node processes sharing one store (directories as the
backends every node lists in its storage.toml)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hero.cluster.connect import auth_env
from hero.cluster.key import ClusterKey
from hero.cluster.resources import WATTS, node_resources
from hero.identity import NodeKeys
from hero.power.profiles import load_profile
from tests.conftest import ROOT, free_port

AGENT = "tests.cluster.agent:Echo"
KEY = ClusterKey.generate()  # every test cluster of a process has this key: Ray keeps a process's first token
SHARED_BACKENDS = 6  # k=4 + m=2: small and quick; every node lists the same directories


class RayCluster:
    """`nodes` Ray nodes on this machine, each offering `watts` of hero_watts and the default hardware profile;
    `address` is the head's."""

    def __init__(self, key: ClusterKey, *, nodes: int = 2, watts: float = 60.0) -> None:
        self.key = key
        self.nodes = nodes
        self.watts = watts
        self.cluster: Any = None
        self._env: dict[str, str | None] = {}

    def __enter__(self) -> RayCluster:
        for name, value in auth_env(self.key).items():
            self._env[name] = os.environ.get(name)
            os.environ[name] = value
        from ray.cluster_utils import Cluster

        resources = {**node_resources(load_profile()), WATTS: self.watts}  # as `hero cluster ray-start` declares
        args = {"num_cpus": 1, "resources": resources, "object_store_memory": 80 << 20}
        self.cluster = Cluster(initialize_head=True, connect=False, head_node_args={**args, "include_dashboard": False})
        for _ in range(self.nodes - 1):
            self.cluster.add_node(**args)
        self.cluster.wait_for_nodes()
        return self

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
        finally:
            for name, value in self._env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def shared_storage(data_dir: Path, backends: Path) -> None:
    """The node's storage.toml: no backends of its own, the cluster's shared ones."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = ["k = 4", "m = 2", "local_backends = 0", "fsync = false", ""]
    for i in range(SHARED_BACKENDS):
        lines += ["[[backend]]", f'dir = "{backends / f"{i:02d}"}"', f'location = "site-{i % 3}"', ""]
    (data_dir / "storage.toml").write_text("\n".join(lines))


class HeroNode:
    """One `hero up --ray` process (the host actor it creates runs the node)."""

    def __init__(self, tmp: Path, name: str, ray: str, key_file: Path, backends: Path, *, ttl_s: float = 3.0,
                 idle_after_s: float = 300.0, port: int | None = None, cluster_url: str = "", settings: str = "",
                 power: str = "", data_dir: Path | None = None, storage: str = "") -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = data_dir or tmp / name
        shared_storage(self.data, backends)
        if storage:  # the cluster's store is elsewhere (fragment servers)
            (self.data / "storage.toml").write_text(storage)
        (self.data / "hero.toml").write_text(
            f'[node]\nagent = "{AGENT}"\ncluster_key = "{key_file}"\ncluster_url = "{cluster_url}"\n'
            f"idle_after_s = {idle_after_s}\nn_ctx = 512\nmax_tokens = 8\nllm_parallel = 1\n{settings}\n"
            + (f"[power]\n{power}\n" if power else "")
        )
        self.log = open(tmp / f"{name}.log", "w")  # closed in stop() or kill()
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hero.cli", "up", "--ray", ray, "--cluster-key", str(key_file), "--port",
             str(self.port), "--data", str(self.data), "--no-overlay", "--lease-ttl", str(ttl_s)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, env=env, start_new_session=True,
        )
        self.lines: list[str] = []
        self.pid: int | None = None  # the host actor's process

    def wait_ready(self, timeout_s: float = 120.0) -> HeroNode:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"node {self.name} exited {self.proc.wait()}: {self.stderr()}")
            self.lines.append(line.rstrip())
            found = re.search(r"· pid (\d+)$", line.strip())
            if found:
                self.pid = int(found.group(1))
                return self
        raise AssertionError(f"node {self.name} did not start in {timeout_s}s: {self.stderr()}")

    @property
    def node_id(self) -> str:
        return NodeKeys.load_or_create(self.data).node_id  # made by the node as it started

    def token(self) -> str:
        """The first user's token, as the node that made that user printed it."""
        return next(line.split("token=")[1] for line in self.lines if "Chat:" in line)

    def stderr(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def kill(self) -> None:
        """kill -9 the node: its host actor's process and the `hero up` that owns it."""
        for pid in (self.pid, self.proc.pid):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        if self.pid is not None:  # the actor ends with its owner; make sure of it
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def hero(*args: str, key_file: Path) -> Any:
    """Run a `hero` command (with --json) as an operator would; its JSON output."""
    env = {**os.environ, "HERO_CLUSTER_KEY": str(key_file), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "hero.cli", *args, "--json"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def chat(node: HeroNode, token: str, text: str, *, stream: bool = False, timeout: float = 60) -> httpx.Response:
    body = {"model": "hero", "stream": stream, "messages": [{"role": "user", "content": text}]}
    return httpx.post(node.url + "/v1/chat/completions", json=body, timeout=timeout, trust_env=False,
                      headers={"Authorization": f"Bearer {token}"})


def reply_text(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"]
                out += [c["delta"].get("content") or "" for c in delta]
        return "".join(out)
    return str(response.json()["choices"][0]["message"]["content"])
