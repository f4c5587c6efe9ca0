"""LLM throughput and latency: the machine's ceiling, llama-cpp-python serial, and Hero batching agents.

Same model (SmolLM2-135M), same prompts (the default agent's system prompt + one of 16 requests for
a long answer), same threads, in one run:

  ceiling   raw llama.cpp through the low-level API: 1, 8 and 16 sequences decoded in one batch
            (greedy, fixed length, prompt already in the cache): decode tokens/s and CPU-s per 1,000 tokens.
  serial    raw llama-cpp-python, `create_chat_completion` streamed, one request at a time (what the
            node did before it batched).
  hero      `hero up` in a subprocess; C = 1, 4, 8, 16 agents in a closed loop through the real
            /v1/chat/completions (streamed), each request from a fresh agent so the prompt is the same
            as the raw runs'; the C workers start staggered over one request's duration, as users do.

Figures: aggregate tokens/s, per-request tokens/s (after the first token), time to first token
p50/p99, CPU-seconds per 1,000 tokens (the serving process only: energy per token). Each phase is
repeated `--repeats` times, interleaved, and the best repeat of each is kept (the machine is shared).
Then one agent's 20-turn conversation through the LLM service, three ways: from scratch each turn,
reusing its resident KV cells, and restoring its saved state after two other agents took the cells:
prompt tokens computed and the summed time to first token (which is the prompt's processing).

    .venv/bin/python bench/llm_bench.py [--quick] [--repeats 3] [--max-tokens 128] [--threads N] [--json]
    .venv/bin/python bench/llm_bench.py --only-reuse    # just the 20-turn prompt-reuse figures
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.assistant import SYSTEM  # noqa: E402
from hero.identity import NodeKeys, UserKey  # noqa: E402
from hero.scheduler.model import default_model_path  # noqa: E402
from hero.users import Users  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Describe a busy market in a big city in detail.",
    "Explain how a bicycle works, step by step.",
    "Write a letter to a friend about your summer holiday.",
    "Tell me everything you know about the moon.",
    "Describe how to bake bread at home.",
    "Write a fairy tale about a brave little mouse.",
    "Explain the water cycle to a ten year old.",
    "Describe a walk through a forest in autumn.",
    "Write a long poem about the sea.",
    "Tell the story of a robot who learns to paint.",
    "Explain how to plan a garden for the first time.",
    "Describe life on a farm throughout one year.",
    "Write a story about two friends lost in the mountains.",
    "Explain how airplanes fly.",
    "Describe your perfect day from morning to night.",
]
CONCURRENCY = (1, 4, 8, 16)


@dataclass
class Phase:
    name: str
    requests: int
    tokens: int
    wall_s: float
    cpu_s: float
    ttft: list[float]
    per_request_tps: list[float]
    inference_cpu_s: float | None = None  # of cpu_s, the inference thread's and its compute threads'

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return 1000 * self.cpu_s / self.tokens if self.tokens else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "tokens": self.tokens,
            "aggregate_tps": round(self.aggregate_tps, 1),
            "per_request_tps": round(statistics.median(self.per_request_tps), 1) if self.per_request_tps else None,
            "ttft_p50_s": round(pct(self.ttft, 50), 3) if self.ttft else None,
            "ttft_p99_s": round(pct(self.ttft, 99), 3) if self.ttft else None,
            "cpu_s_per_1k_tokens": round(self.cpu_per_1k, 2),
            "inference_cpu_s_per_1k_tokens": (round(1000 * self.inference_cpu_s / self.tokens, 2)
                                              if self.inference_cpu_s is not None and self.tokens else None),
        }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


# ---- the ceiling: raw llama.cpp, low-level API ----


class RawBatch:
    """n sequences decoded in one llama_decode per step, straight on llama-cpp-python's C bindings."""

    def __init__(self, threads: int, n_seq: int = 16, n_ctx_seq: int = 512) -> None:
        import llama_cpp as C
        from llama_cpp import _logger
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _logger.set_verbose(False)
        self.C = C
        C.llama_backend_init()
        self.model = C.llama_model_load_from_file(str(default_model_path()).encode(), C.llama_model_default_params())
        self.vocab = C.llama_model_get_vocab(self.model)
        params = C.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx_seq * n_seq, 512, 512
        params.n_seq_max, params.kv_unified, params.no_perf = n_seq, False, True
        params.n_threads = params.n_threads_batch = threads
        self.ctx = C.llama_init_from_model(self.model, params)
        self.batch = C.llama_batch_init(512, 0, 1)
        template = C.llama_model_chat_template(self.model, None).decode()
        fmt = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|im_start|>")
        self.prompts = [self.tokenize(fmt(messages=messages(i)).prompt) for i in range(n_seq)]  # type: ignore[arg-type]
        self.greedy = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        C.llama_sampler_chain_add(self.greedy, C.llama_sampler_init_greedy())

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.C.llama_token * (len(data) + 8))()
        n = self.C.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        assert self.C.llama_decode(self.ctx, b) == 0

    def run(self, n: int, steps: int) -> Phase:
        C = self.C
        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        last: dict[int, int] = {}
        for seq in range(n):
            prompt = self.prompts[seq]
            self._decode([(t, p, seq, p == len(prompt) - 1) for p, t in enumerate(prompt)])
            last[seq] = C.llama_sampler_sample(self.greedy, self.ctx, len(prompt) - 1)
        pos = {seq: len(self.prompts[seq]) for seq in range(n)}
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self._decode([(last[s], pos[s], s, True) for s in range(n)])
            for s in range(n):
                pos[s] += 1
                last[s] = C.llama_sampler_sample(self.greedy, self.ctx, s)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return Phase(f"ceiling: {n} sequences in one batch", n, n * steps, wall, cpu, [], [steps / wall] * n)


# ---- raw llama-cpp-python, serial ----


def raw_serial(llama: Any, count: int, max_tokens: int) -> Phase:
    ttft, rates, tokens = [], [], 0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        started = time.perf_counter()
        first = None
        n = 0
        for chunk in llama.create_chat_completion(messages(i), stream=True, max_tokens=max_tokens, temperature=0.0):
            if chunk["choices"][0]["delta"].get("content"):
                n += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        if first is not None:
            ttft.append(first - started)
            if n > 1:
                rates.append((n - 1) / (end - first))
        tokens += n
    return Phase("serial: llama-cpp-python create_chat_completion", count, tokens, time.perf_counter() - wall,
                 time.process_time() - cpu, ttft, rates)


# ---- Hero through its HTTP API ----


class HeroNode:
    def __init__(self, data: Path, threads: int, parallel: int, tokens_needed: int) -> None:
        users = Users(data, NodeKeys.load_or_create(data))
        self.tokens = [users.issue(users.add(f"b{i}", UserKey.generate().agent_id))[0] for i in range(tokens_needed)]
        users.close()
        self.next = 0
        self.port = 19000 + os.getpid() % 1000
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HERO_LLM_THREADS": str(threads), "HERO_N_CTX": "2048", "HERO_MAX_TOKENS": "256",
               "HERO_LLM_PARALLEL": str(parallel), "HERO_IDLE_AFTER_S": "3600"}
        self.proc = subprocess.Popen([sys.executable, "-m", "hero.cli", "up", "--data", str(data), "--port",
                                      str(self.port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("hero up did not start")

    def take_token(self) -> str:
        token = self.tokens[self.next]
        self.next += 1
        return token

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def inference_cpu(self) -> float:
        """CPU-seconds of the node's inference thread and the compute threads it started (named hero-llm…)."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith("hero-llm"):
                    total += int((task / "schedstat").read_text().split()[0])
            except OSError:
                continue
        return total / 1e9

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


async def hero_request(http: httpx.AsyncClient, token: str, i: int, max_tokens: int) -> tuple[float, float, int, float]:
    """(ttft, end, completion tokens, start) of one streamed chat completion."""
    body = {"model": "hero", "stream": True, "max_tokens": max_tokens, "temperature": 0.0,
            "stream_options": {"include_usage": True}, "messages": messages(i)[1:]}
    started = time.perf_counter()
    first = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {token}"}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
    return (first or time.perf_counter()) - started, time.perf_counter(), tokens, started


async def hero_phase(node: HeroNode, concurrency: int, rounds: int, max_tokens: int, stagger_s: float) -> Phase:
    results: list[tuple[float, float, int, float]] = []

    async def worker(w: int) -> None:
        await asyncio.sleep(w * stagger_s / concurrency)
        for r in range(rounds):
            results.append(await hero_request(http, node.take_token(), w + r * concurrency, max_tokens))

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=node.url, timeout=600, limits=limits) as http:
        cpu, inference, wall = node.cpu(), node.inference_cpu(), time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall, cpu, inference = time.perf_counter() - wall, node.cpu() - cpu, node.inference_cpu() - inference
    ttft = [r[0] for r in results]
    rates = [(n - 1) / (end - (start + t)) for t, end, n, start in results if n > 1 and end > start + t]
    return Phase(f"hero: {concurrency} concurrent agents", len(results), sum(r[2] for r in results), wall, cpu,
                 ttft, rates, inference)


# ---- prompt reuse over a 20-turn conversation ----

TURNS = [f"Tell me one short fact about the number {n}." for n in range(1, 21)]


async def conversation(threads: int, mode: str, turns: int = 20) -> dict[str, Any]:
    """One agent's conversation through the LLM service; returns prompt tokens computed and their time.

    `fresh`: every turn from a new agent id, two other agents taking both sequences between turns (nothing
    to reuse: the baseline; without them the new agent would take over the cells its predecessor left, which
    hold the same conversation); `resident`: the same agent, its cells kept between turns; `restored`: the
    same agent, the two others taking both sequences between its turns, so its state is saved and restored.
    The two others share no prompt start with it or with each other (their own system prompts).
    """
    from hero.scheduler.llm import LLMService

    llm = LLMService(default_model_path(), n_ctx=2048, threads=threads, parallel=2, temperature=0.0)
    await llm.start()
    try:
        history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
        prompt_s = 0.0
        computed = 0
        for t, text in enumerate(TURNS[:turns]):
            history.append({"role": "user", "content": text})
            agent = f"{t:064x}" if mode == "fresh" else "a" * 64
            usage: dict[str, Any] = {}
            before = llm.stats.prompt_tokens
            started = time.perf_counter()
            first = None
            parts = []
            async for delta in llm.stream(agent, history, max_tokens=24, usage=usage):
                first = first or time.perf_counter()
                parts.append(delta)
            prompt_s += (first or time.perf_counter()) - started
            computed += llm.stats.prompt_tokens - before
            history.append({"role": "assistant", "content": "".join(parts).strip()})
            if mode != "resident":
                for other, role in (("b", "Answer in French."), ("c", "Reply with one word.")):
                    async for _ in llm.stream(other * 64, [{"role": "system", "content": role},
                                                          {"role": "user", "content": "Say ok."}], max_tokens=2):
                        pass
        return {"mode": mode, "turns": turns, "prompt_tokens_last_turn": usage["prompt_tokens"],
                "prompt_tokens_computed": computed, "time_to_first_token_s": round(prompt_s, 3),
                "restored": llm.stats.restored}
    finally:
        await llm.aclose()


def best(phases: list[Phase]) -> Phase:
    return max(phases, key=lambda p: p.aggregate_tps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, short replies (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only-reuse", action="store_true", help="only the 20-turn prompt-reuse measurement")
    args = parser.parse_args()
    if args.only_reuse:
        print_reuse([asyncio.run(conversation(args.threads, mode)) for mode in ("fresh", "resident", "restored")])
        return
    repeats, max_tokens = (1, 32) if args.quick else (args.repeats, args.max_tokens)
    rounds = {1: 8, 4: 3, 8: 3, 16: 2} if not args.quick else {1: 2, 4: 1, 8: 1, 16: 1}
    needed = repeats * (sum(c * rounds[c] for c in CONCURRENCY) + 1)

    from llama_cpp import Llama

    runs: dict[str, list[Phase]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hero-llm-bench-") as tmp:
        node = HeroNode(Path(tmp) / "data", args.threads, 16, needed)
        raw = RawBatch(args.threads)
        llama = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=args.threads,
                      n_threads_batch=args.threads, verbose=False)
        try:
            asyncio.run(hero_phase(node, 1, 1, 8, 0.0))  # warm-up: first activation, first decode
            for _ in range(repeats):  # interleaved: drift on the shared machine hits every phase alike
                for n in (1, 8, 16):
                    runs.setdefault(f"ceiling{n}", []).append(raw.run(n, max_tokens))
                runs.setdefault("serial", []).append(raw_serial(llama, rounds[1], max_tokens))
                alone = None
                for c in CONCURRENCY:
                    stagger = alone.wall_s / alone.requests if alone else 0.0
                    phase = asyncio.run(hero_phase(node, c, rounds[c], max_tokens, stagger))
                    alone = alone or phase
                    runs.setdefault(f"hero{c}", []).append(phase)
        finally:
            node.close()
    reuse = [asyncio.run(conversation(args.threads, mode, 4 if args.quick else 20))
             for mode in ("fresh", "resident", "restored")]
    load_after = os.getloadavg()
    report(runs, args, max_tokens, load_before, load_after)
    if not args.json:
        print_reuse(reuse)


def print_reuse(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    last = base["prompt_tokens_last_turn"]
    print(f"prompt reuse, one {base['turns']}-turn conversation (last prompt {last} tokens):")
    for row in rows:
        saved = 1 - row["time_to_first_token_s"] / base["time_to_first_token_s"]
        print(f"  {row['mode']:9} prompt tokens computed {row['prompt_tokens_computed']:6}  "
              f"time to first token, all turns {row['time_to_first_token_s']:7.2f} s  ({saved:+.0%} saved)"
              + (f"  restored {row['restored']}x" if row["mode"] == "restored" else ""))


def report(runs: dict[str, list[Phase]], args: argparse.Namespace, max_tokens: int, load_before: tuple[float, ...],
           load_after: tuple[float, ...]) -> None:
    b = {name: best(phases) for name, phases in runs.items()}
    r = {name: p.row() for name, p in b.items()}
    ratios = {
        "hero1_vs_serial_per_request": b["hero1"].row()["per_request_tps"] / b["serial"].row()["per_request_tps"],
        "hero1_vs_ceiling1": b["hero1"].row()["per_request_tps"] / b["ceiling1"].aggregate_tps,
        "hero8_vs_ceiling8": b["hero8"].aggregate_tps / b["ceiling8"].aggregate_tps,
        "hero8_vs_hero1_aggregate": b["hero8"].aggregate_tps / b["hero1"].aggregate_tps,
        "ttft_p99_hero8_vs_hero1": r["hero8"]["ttft_p99_s"] / r["hero1"]["ttft_p99_s"],
    }
    cpu_falls = [r[f"hero{c}"]["cpu_s_per_1k_tokens"] for c in CONCURRENCY]
    out = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_before": load_before,
                       "load_after": load_after}, "max_tokens": max_tokens, "repeats": len(runs["serial"]),
           "figures": r, "ratios": ratios, "runs": {k: [asdict(p) for p in v] for k, v in runs.items()}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{os.cpu_count()} CPUs, {args.threads} threads, max_tokens {max_tokens}, best of {len(runs['serial'])}; "
          f"load {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'':52} {'agg tok/s':>9} {'req tok/s':>9} {'TTFT p50':>8} {'p99':>7} {'CPU-s/1k':>8} {'reqs':>5}")
    for name in ["ceiling1", "ceiling8", "ceiling16", "serial", *(f"hero{c}" for c in CONCURRENCY)]:
        row = r[name]
        ttft = (f"{row['ttft_p50_s']:8.3f} {row['ttft_p99_s']:7.3f}" if row["ttft_p50_s"] is not None
                else f"{'–':>8} {'–':>7}")
        print(f"{row['name']:52} {row['aggregate_tps']:9.1f} {row['per_request_tps']:9.1f} {ttft} "
              f"{row['cpu_s_per_1k_tokens']:8.2f} {row['requests']:5}")
    print(f"1 agent vs serial llama-cpp-python, per request: {ratios['hero1_vs_serial_per_request']:.3f} "
          f"(vs 1-sequence ceiling {ratios['hero1_vs_ceiling1']:.3f})  [target >= 0.95]")
    print(f"8 agents vs 8-sequence ceiling, aggregate: {ratios['hero8_vs_ceiling8']:.3f}  [target >= 0.85]")
    print(f"8 agents vs 1 agent, aggregate: {ratios['hero8_vs_hero1_aggregate']:.2f}  [target >= 1.5]")
    print(f"TTFT p99, 8 agents vs 1 agent: {ratios['ttft_p99_hero8_vs_hero1']:.2f}  [target <= 1.5]")
    print(f"CPU-s per 1k tokens, 1/4/8/16 agents: {' / '.join(f'{c:.2f}' for c in cpu_falls)}  [target: falling]")
    inference = [r[f"hero{c}"]["inference_cpu_s_per_1k_tokens"] for c in CONCURRENCY]
    print(f"... of which the inference thread: {' / '.join(f'{c:.2f}' for c in inference)}  (ceiling 1 / 8 / 16: "
          f"{r['ceiling1']['cpu_s_per_1k_tokens']:.2f} / {r['ceiling8']['cpu_s_per_1k_tokens']:.2f} / "
          f"{r['ceiling16']['cpu_s_per_1k_tokens']:.2f})")


if __name__ == "__main__":
    main()
