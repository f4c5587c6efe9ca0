"""Runtime benchmark: dispatch rate, activation latency, idle cost, and API tokens/s against raw llama.cpp.

    .venv/bin/python bench/runtime_bench.py [--quick]

Prints one line per figure, each with its target. Ratios are against a
baseline measured in the same run, since absolute times on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx
import psutil

from agents import assistant
from hero.config import NodeConfig
from hero.identity import NodeKeys, UserKey
from hero.power.service import PowerService
from hero.runtime.agent import AgentFactory
from hero.runtime.events import Event, Ping, Reply
from hero.runtime.node import Node
from hero.scheduler.model import default_model_path
from hero.server import open_store
from hero.users import Users

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def make_node(data: Path, idle_after_s: float = 3600, factory: AgentFactory = assistant.create) -> Node:
    keys = NodeKeys.load_or_create(data)
    store = await open_store(NodeConfig(data_dir=data), keys)
    node = Node(store, None, factory, node_id=keys.node_id, idle_after_s=idle_after_s)  # no-op events: no LLM
    await node.start()
    return node


async def dispatch(data: Path, agents: int, rounds: int) -> None:
    node = await make_node(data)
    ids = [UserKey.generate().agent_id for _ in range(agents)]
    for agent in ids:
        await node.post(agent, Ping())
    await node.settle()
    event = Ping()

    started = time.perf_counter()
    for _ in range(rounds):
        for agent in ids:
            await node.post(agent, event)
        await node.settle()
    single = rounds * agents / (time.perf_counter() - started)

    burst = 32
    started = time.perf_counter()
    for _ in range(max(1, rounds // 4)):
        for agent in ids:
            for _ in range(burst):
                await node.post(agent, event)
        await node.settle()
    queued = max(1, rounds // 4) * agents * burst / (time.perf_counter() - started)
    print(f"(a) no-op dispatch, {agents} agents: {queued:,.0f} events/s with mail queued ({burst}/agent per drain); "
          f"{single:,.0f} events/s one event per agent per drain  [target >= 100,000]")
    await node.aclose()
    await node.store.aclose()  # its scrubber would otherwise run on into the next figure


class Talker(assistant.Assistant):
    """The assistant, and a Ping adds 20 entries of history (about 10 KB) to it: a state worth reading back."""

    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, Ping) and not len(self.history):
            for i in range(10):
                self.history.add("user", f"message {i} " + "lorem ipsum " * 20)
                self.history.add("assistant", f"answer {i} " + "dolor sit amet " * 20)
        await super().handle(event, reply)


async def activation_latency(data: Path, agents: int) -> None:
    node = await make_node(data, factory=Talker)
    ids = [UserKey.generate().agent_id for _ in range(agents)]
    for agent in ids:  # give each agent real state: ~20 messages of history
        await node.post(agent, Ping())
    await node.settle()
    await node.hibernate_idle(0)
    warm = []
    for agent in ids:
        started = time.perf_counter()
        reply = await node.deliver(agent, Ping())
        await reply.wait_accepted()
        warm.append(time.perf_counter() - started)
    await node.hibernate_idle(0)
    print(f"(b) activate a hibernated agent (~10 KB state), n={agents}: p50 {pct(warm, 50) * 1e3:.2f} ms, "
          f"p99 {pct(warm, 99) * 1e3:.2f} ms  [target p99 <= 5 ms]; "
          f"store {type(node.store).__name__}")
    await node.aclose()
    await node.store.aclose()  # its scrubber would otherwise run on into the next figure


async def idle_cost(data: Path, hibernated: int, resident: int, seconds: float) -> None:
    process = psutil.Process()
    node = await make_node(data)
    warm_ids = [UserKey.generate().agent_id for _ in range(20)]
    for agent in warm_ids:  # warm-up: store threads and caches
        await node.post(agent, Ping())
    await node.settle()
    tracemalloc.start()
    rss_before = process.memory_info().rss
    heap_before = tracemalloc.get_traced_memory()[0]
    resident_ids = [UserKey.generate().agent_id for _ in range(resident)]
    for agent in resident_ids:
        await node.post(agent, Ping())
    await node.settle()
    heap_per_agent = (tracemalloc.get_traced_memory()[0] - heap_before) / resident
    tracemalloc.stop()
    rss_per_agent = (process.memory_info().rss - rss_before) / resident
    hibernated_ids = [UserKey.generate().agent_id for _ in range(hibernated)]  # the warm-up agents stay resident
    for agent in hibernated_ids:
        await node.post(agent, Ping())
    await node.settle()
    for agent in hibernated_ids:
        await node.hibernate(agent)
    assert node.active_count == resident + len(warm_ids)
    busy = await cpu_share(process, seconds)
    print(f"(c) {hibernated} hibernated + {resident} resident idle agents over {seconds:.0f} s: "
          f"{busy * 100:.3f} % of one core; per resident agent {rss_per_agent / 1024:.1f} KB RSS "
          f"({heap_per_agent / 1024:.1f} KB Python heap)  [target <= 0.1 %, <= 50 KB]")
    power = PowerService("zos-edge-60w", data)
    power.attach(node, None)
    await power.start()
    awake = await cpu_share(process, seconds)
    await node.hibernate_idle(0)
    await asyncio.sleep(power.config.quiet_after_s)
    asleep = await cpu_share(process, seconds)
    await power.aclose()
    print(f"    whole node with the power service: {awake * 100:.3f} % of one core with {resident} agents awake "
          f"(1 Hz tick), {asleep * 100:.3f} % with all {hibernated + resident} hibernated (quiet tick)")
    await node.aclose()
    await node.store.aclose()  # its scrubber would otherwise run on into the next figure


async def cpu_share(process: psutil.Process, seconds: float) -> float:
    """CPU seconds this process used per wall second, over `seconds` of doing nothing."""
    before = process.cpu_times()
    wall = time.perf_counter()
    await asyncio.sleep(seconds)
    after = process.cpu_times()
    used = after.user + after.system - before.user - before.system
    return max(0.0, used) / (time.perf_counter() - wall)


def raw_tokens_per_second(messages: list[dict], max_tokens: int, threads: int, n_ctx: int) -> tuple[float, int]:
    from llama_cpp import Llama

    llama = Llama(model_path=str(default_model_path()), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                  verbose=False)
    started = time.perf_counter()
    tokens = 0
    for chunk in llama.create_chat_completion(messages, stream=True, max_tokens=max_tokens, temperature=0.0):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
    elapsed = time.perf_counter() - started
    del llama
    return tokens / elapsed, tokens


def api_tokens_per_second(url: str, token: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {"model": "hero", "stream": True, "max_tokens": max_tokens, "temperature": 0.0,
            "messages": [{"role": "user", "content": prompt}]}
    tokens = 0
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {token}"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                if json.loads(line[5:])["choices"][0]["delta"].get("content"):
                    tokens += 1
    return tokens / (time.perf_counter() - started), tokens


def throughput(data: Path, repeats: int) -> None:
    threads, n_ctx, max_tokens = 2, 2048, 128
    prompt = "Write a short story about a lighthouse keeper."
    messages = [{"role": "system", "content": assistant.SYSTEM}, {"role": "user", "content": prompt}]
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "HERO_LLM_THREADS": str(threads), "HERO_N_CTX": str(n_ctx), "HERO_MAX_TOKENS": "256"}
    users = Users(data, NodeKeys.load_or_create(data))
    tokens = []
    for i in range(repeats):
        user = users.add(f"bench{i}", UserKey.generate().agent_id)
        tokens.append(users.issue(user)[0])
    server = subprocess.Popen([sys.executable, "-m", "hero.cli", "up", "--data", str(data), "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        api, raw = [], []
        for i in range(repeats):  # interleaved so drift hits both alike; the server idles while raw runs
            api.append(api_tokens_per_second(url, tokens[i], prompt, max_tokens))
            raw.append(raw_tokens_per_second(messages, max_tokens, threads, n_ctx))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    api_best = max(a[0] for a in api)
    raw_best = max(r[0] for r in raw)
    print(f"(d) tokens/s, {max_tokens} max tokens, {threads} threads, best of {repeats}: "
          f"API {api_best:.1f} ({api[0][1]} tokens) vs raw llama-cpp-python {raw_best:.1f} ({raw[0][1]} tokens): "
          f"ratio {api_best / raw_best:.3f}  [target >= 0.95]")


async def run_async(args: argparse.Namespace, base: Path) -> None:
    await dispatch(base / "a", 1000, 10 if args.quick else 40)
    await activation_latency(base / "b", 200 if args.quick else 1000)
    await idle_cost(base / "c", 2000, 200, 3 if args.quick else 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument("--skip-llm", action="store_true", help="skip (d), the model throughput figure")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        asyncio.run(run_async(args, base))
        if not args.skip_llm:
            throughput(base / "d", 2 if args.quick else 3)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
