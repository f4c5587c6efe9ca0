"""Runtime benchmark: dispatch rate, activation latency, idle cost, API tokens/s against raw llama.cpp, and an
agent's storage cost per turn as its history grows (segments against the single-object layout).

    .venv/bin/python bench/runtime_bench.py [--quick] [--history-only]

Prints one line per figure, each with its target. Ratios are against a
baseline measured in the same run, since absolute times on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import psutil
import zstandard

from agents import assistant
from hero.chat.agent import ChatAgent
from hero.chat.histories import Histories
from hero.chat.segments import SEGMENT_ENTRIES
from hero.config import NodeConfig
from hero.identity import NodeKeys, UserKey
from hero.power.service import PowerService
from hero.runtime.agent import Agent, AgentFactory
from hero.runtime.events import ChatMessage, Event, Ping, Reply
from hero.runtime.keys import state_key
from hero.runtime.node import Node
from hero.scheduler.model import default_model_path
from hero.server import open_store
from hero.store.packs import PackFiles
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


class Echo(ChatAgent):
    """(e)'s agent: a turn as the assistant writes it (the user's entry persisted, then the answer persisted)."""

    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage):
            self.history.add("user", event.text)
            await self.ctx.persist()
            self.history.add("assistant", f"echo: {event.text}")
            await self.ctx.persist()
        reply.accept()


class SingleObject(Agent):
    """(e)'s baseline: today's layout before segments, every entry in the one state object, written each time."""

    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage):
            entries = self.ctx.state.setdefault("history", [])
            for role, text in (("user", event.text), ("assistant", f"echo: {event.text}")):
                entries.append({"seq": len(entries) + 1, "role": role, "content": text, "ts": time.time(),
                                "kind": "chat"})
                await self.ctx.persist()
        reply.accept()


class Counting:
    """The real store, with each put's payload and time recorded."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.puts: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def put(self, key: str, data: bytes, *, epoch: int, expect: int | None = None) -> Any:
        began = time.perf_counter()
        version = await self.store.put(key, data, epoch=epoch, expect=expect)
        self.puts.append((len(data), time.perf_counter() - began))
        return version


WORDS = ("remind me to call the dentist about tomorrow's appointment at nine; what did we say about the budget "
         "for the garden, and which seeds should I order before spring? thanks, that helps a lot").split()


def chat_text(i: int) -> str:
    rnd = random.Random(i)
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 30))) + f" #{i}"


def seeded(count: int) -> list[dict[str, Any]]:
    return [{"seq": i, "role": "user" if i % 2 else "assistant", "content": chat_text(i), "ts": 1.7e9 + i * 60,
             "kind": "chat"} for i in range(1, count + 1)]


def disk_bytes(data: Path) -> int:
    """Bytes the directory backends took (appended to packs, manifests), dead or alive."""
    return sum(f.stat().st_size for f in (data / "backends").rglob("*") if f.is_file())


def live_bytes(data: Path) -> int:
    """Bytes the backends hold for live objects: fragments still referenced, and manifests (pruned versions'
    fragments are dead space in their pack until it is compacted, which happens as gc goes on)."""
    total = 0
    for backend in sorted((data / "backends").iterdir()):
        packs = PackFiles(backend / "packs", fsync=False)
        try:
            total += packs.totals()[1]
        finally:
            packs.close()
        total += sum(f.stat().st_size for f in backend.rglob("*") if f.is_file() and "packs" not in f.parts)
    return total


async def layout_figures(data: Path, factory: AgentFactory, messages: int, turns: int) -> dict[str, float]:
    """Per-turn payload and disk bytes, put and activation latency for one agent with `messages` of history."""
    keys = NodeKeys.load_or_create(data)
    store = await open_store(NodeConfig(data_dir=data), keys)
    counting = Counting(store)
    node = Node(counting, None, factory, node_id=keys.node_id, idle_after_s=3600)  # type: ignore[arg-type]
    agent = UserKey.generate().agent_id
    await store.put(state_key(agent), json.dumps({"history": seeded(messages)}).encode(), epoch=1)
    await (await node.deliver(agent, Ping())).wait_accepted()  # activated (and migrated, with segments)
    activations = []
    for _ in range(3):
        await node.hibernate(agent)
        began = time.perf_counter()
        await (await node.deliver(agent, Ping())).wait_accepted()
        activations.append(time.perf_counter() - began)
    counting.puts.clear()
    disk = disk_bytes(data)
    for i in range(turns):
        await (await node.deliver(agent, ChatMessage(chat_text(messages + i)))).wait_accepted()
    out = {"payload": sum(p for p, _ in counting.puts) / turns, "disk": (disk_bytes(data) - disk) / turns,
           "put_ms": 1000 * pct([t for _, t in counting.puts], 50), "activate_ms": 1000 * min(activations)}
    await node.aclose()
    await store.aclose()
    return out


async def stored_figures(data: Path, factory: AgentFactory, messages: int, turns: int) -> tuple[int, int]:
    """Live bytes on the backends for one agent with `messages` of history (stored as before segments, then
    activated: migrated) after `turns` more turns and a hibernation, and the zstd size of its messages' JSON."""
    keys = NodeKeys.load_or_create(data)
    store = await open_store(NodeConfig(data_dir=data), keys)
    node = Node(store, None, factory, node_id=keys.node_id, idle_after_s=3600)  # type: ignore[arg-type]
    agent = UserKey.generate().agent_id
    empty = live_bytes(data)
    await store.put(state_key(agent), json.dumps({"history": seeded(messages)}).encode(), epoch=1)
    for i in range(turns):
        await (await node.deliver(agent, ChatMessage(chat_text(messages + i)))).wait_accepted()
    await node.hibernate(agent)
    await node.settle()  # the head's old versions pruned
    entries = [e.to_json() async for e in Histories(node).stream(agent)]
    compressed = len(zstandard.ZstdCompressor(level=3).compress(json.dumps(entries).encode()))
    stored = live_bytes(data) - empty
    await node.aclose()
    await store.aclose()
    return stored, compressed


async def history_figures(base: Path, *, quick: bool) -> None:
    """(e) An agent's storage as its history grows: segments beside the single-object layout, same run."""
    sizes = (10, 1_000, 10_000) if quick else (10, 1_000, 10_000, 100_000)
    window = SEGMENT_ENTRIES  # turns (two entries each): every window holds whole seal cycles
    rows: dict[str, dict[int, dict[str, float]]] = {"segments": {}, "single object": {}}
    for n in sizes:
        rows["segments"][n] = await layout_figures(base / f"seg{n}", Echo, n, window)
        rows["single object"][n] = await layout_figures(base / f"one{n}", SingleObject, n,
                                                        max(2, min(window, 200_000 // max(n, 1))))
    for name, row in rows.items():
        for n, f in row.items():
            print(f"(e) {name:13} {n:>7,} messages: per turn {f['payload'] / 1024:8.1f} KiB put, "
                  f"{f['disk'] / 1024:8.1f} KiB on disk; put {f['put_ms']:6.1f} ms (median); "
                  f"activation {f['activate_ms']:6.1f} ms")
    first, last = rows["segments"][sizes[0]], rows["segments"][sizes[-1]]
    print(f"(e) segments, {sizes[-1]:,} vs {sizes[0]} messages: "
          f"per-turn bytes put x{last['payload'] / first['payload']:.2f}, on disk x{last['disk'] / first['disk']:.2f}, "
          f"put latency x{last['put_ms'] / first['put_ms']:.2f}, "
          f"activation x{last['activate_ms'] / first['activate_ms']:.2f}  [target <= 1.2]")
    old = rows["single object"][sizes[-1]]
    print(f"(e) at {sizes[-1]:,} messages, single object / segments: "
          f"per-turn bytes put x{old['payload'] / last['payload']:.0f}, "
          f"activation x{old['activate_ms'] / last['activate_ms']:.1f}")
    for n in sizes[1:]:
        for name, factory, turns in (("segments", Echo, 8), ("single object", SingleObject, 8)):
            stored, compressed = await stored_figures(base / f"stored-{name[:3]}-{n}", factory, n, turns)
            print(f"(e) {name:13} stored at {n + 2 * turns:>7,} messages: {stored / 2**20:8.2f} MiB live = "
                  f"{stored / (compressed * 1.25):6.2f} x (zstd of the messages, {compressed / 1024:.0f} KiB, "
                  "x 1.25)  [target <= 1.5]")

async def run_async(args: argparse.Namespace, base: Path) -> None:
    await history_figures(base / "e", quick=args.quick)
    if args.history_only:
        return
    await dispatch(base / "a", 1000, 10 if args.quick else 40)
    await activation_latency(base / "b", 200 if args.quick else 1000)
    await idle_cost(base / "c", 2000, 200, 3 if args.quick else 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument("--skip-llm", action="store_true", help="skip (d), the model throughput figure")
    parser.add_argument("--history-only", action="store_true", help="only (e), the history's storage figures")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        asyncio.run(run_async(args, base))
        if not (args.skip_llm or args.history_only):
            throughput(base / "d", 2 if args.quick else 3)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
