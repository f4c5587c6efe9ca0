"""Skills benchmark: what a skill costs a turn, against baselines measured in the same process.

    .venv/bin/python bench/skills_bench.py [--quick] [--skip-llm] [--json]

Three parts, each printing its figures and a ratio against its baseline:

  dispatch  one agent (Hero's assistant, the shipped skills and a one-line bench skill, real runtime and QSS
            in a temp dir, the model a scripted stand-in so only Hero's own work is timed), n events each:
            a Ping (the runtime's dispatch alone: the baseline), a plain chat turn answered by the stand-in
            model (history, persist, skills' prompt lines, the tools' grammar), a slash command of the
            bench skill (`/ok`: history, persist, one call in a skill worker), and `/call bench.echo {...}`
            (the same, plus the arguments checked against the tool's schema). p50/p99 per event. Then another
            agent's `/ok` alone (`beside_calm`) and while this agent's skill burns CPU for 4 s in its worker
            thread (`beside_burning`): what a CPU-bound skill costs other agents through the GIL.
  worker    one call of a trivial function: directly, through `asyncio.to_thread`, and through the skill
            runner (a worker thread with its own loop, a time limit, thread CPU charged): the runner's
            overhead over a plain thread hop.
  grammar   the real default model (SmolLM2-135M), the same tool-calling prompt (the assistant's system prompt
            and the five shipped skills' tools) for 8 asks, greedy, up to 48 tokens: unconstrained (`free`),
            constrained to a call or a plain answer as the assistant does (`grammar`), and constrained to a
            call (`forced`). Time per turn and per generated token (best of the repeats, interleaved), and
            how many outputs are schema-valid calls, plain answers, or broken calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.assistant import SYSTEM  # noqa: E402
from hero.identity import UserKey  # noqa: E402
from hero.runtime.events import ChatMessage, Ping  # noqa: E402
from hero.skills.grammar import gbnf, tools_prompt  # noqa: E402
from hero.skills.registry import SkillRegistry, shipped_dir  # noqa: E402
from hero.skills.runner import SkillRunner  # noqa: E402
from hero.skills.testing import LocalAgent, local_agent  # noqa: E402
from hero.skills.trust import HERO_KEY  # noqa: E402

BENCH_SKILL = '''from hero.skills import SkillContext, command, tool

@command("ok")
def ok(ctx: SkillContext, text: str) -> str:
    return "ok"

@command("burn")
def burn(ctx: SkillContext, text: str) -> str:
    import time
    until = time.monotonic() + float(text)
    while time.monotonic() < until:
        pass
    return "burnt"

@tool
def echo(ctx: SkillContext, x: int, label: str = "") -> dict:
    """Echo its arguments.

    Args:
        x: a number
        label: a word
    """
    return {"x": x, "label": label}
'''
ASKS = ["what is 12*7?", "find my notes about milk", "hello, how are you?", "remember that my cat is Tom",
        "remind me to stretch in 10 minutes", "convert 5 km to miles", "what did I say about the garden?",
        "ask agent " + "ab" * 32 + " what time it is"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figure(name: str, seconds: list[float]) -> dict[str, Any]:
    return {"name": name, "n": len(seconds), "p50_ms": pct(seconds, 0.5) * 1e3, "p99_ms": pct(seconds, 0.99) * 1e3,
            "mean_ms": statistics.fmean(seconds) * 1e3}


async def timed(agent: LocalAgent, make: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        reply = await agent.node.deliver(agent.agent_id, make(i))
        await reply.text()
        out.append(time.perf_counter() - started)
    return out


async def dispatch(n: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hero-skills-bench-") as tmp:
        folder = Path(tmp) / "bench"
        folder.mkdir()
        (folder / "skill.toml").write_text('name = "bench"\nversion = "1.0.0"\ndescription = "bench"\n'
                                           'module = "bench"\n[permissions]\n')
        (folder / "bench.py").write_text(BENCH_SKILL)
        async with local_agent([folder], with_shipped=True) as agent:
            assert await agent.chat("/ok") == "ok"  # activated, skills resolved
            assert "x: 1" in await agent.chat('/call bench.echo {"x": 1}')
            rounds: dict[str, list[float]] = {"ping": [], "plain": [], "slash": [], "call": []}
            for _ in range(3):  # interleaved, so load on the machine falls on all alike
                rounds["ping"] += await timed(agent, lambda i: Ping(), n // 3)
                rounds["plain"] += await timed(agent, lambda i: ChatMessage(f"tell me something {i}"), n // 3)
                rounds["slash"] += await timed(agent, lambda i: ChatMessage("/ok"), n // 3)
                rounds["call"] += await timed(agent, lambda i: ChatMessage(f'/call bench.echo {{"x": {i}}}'), n // 3)
            # another agent's slash commands while this agent's skill burns CPU in its worker thread (the GIL)
            other = LocalAgent(agent.node, UserKey.generate().agent_id, agent.llm)
            await timed(other, lambda i: ChatMessage("/ok"), 3)  # activated, its spec recorded
            for _ in range(3):
                rounds.setdefault("beside_calm", []).extend(await timed(other, lambda i: ChatMessage("/ok"), n // 6))
                burning = asyncio.ensure_future(agent.chat("/burn 4", timeout_s=60))
                await asyncio.sleep(0.05)
                beside: list[float] = []
                while not burning.done():
                    beside += await timed(other, lambda i: ChatMessage("/ok"), 1)
                rounds.setdefault("beside_burning", []).extend(beside[:-1])  # the last may outlive the burn
                assert await burning == "burnt"
    return [figure(f"dispatch.{k}", v) for k, v in rounds.items()]


async def worker(n: int) -> list[dict[str, Any]]:
    def noop() -> int:
        return 1

    async def anoop() -> int:
        return 1

    runner = SkillRunner()
    charged: list[int] = []
    out: dict[str, list[float]] = {"direct": [], "to_thread": [], "runner_sync": [], "runner_async": []}
    try:
        for _ in range(3):
            for _ in range(n // 3):
                started = time.perf_counter()
                await anoop()
                out["direct"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await asyncio.to_thread(noop)
                out["to_thread"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await runner.run(noop, limit_s=10, charge=charged.append)
                out["runner_sync"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await runner.run(anoop, limit_s=10, charge=charged.append)
                out["runner_async"].append(time.perf_counter() - started)
    finally:
        runner.close()
    return [figure(f"worker.{k}", v) for k, v in out.items()]


async def grammar_turns(repeats: int) -> list[dict[str, Any]]:
    from hero.errors import HeroError
    from hero.scheduler.llm import LLMService
    from hero.scheduler.model import default_model_path
    from hero.skills.grammar import parse

    registry = SkillRegistry(trusted=lambda: {HERO_KEY}, shipped=shipped_dir(), entry_points=False)
    registry.load()
    tools = [t for skill in registry.skills().values() for t in skill.tools.values()]
    by_name = {t.qualified: t for t in tools}
    grammars = {"free": None, "grammar": gbnf(tools), "forced": gbnf(tools, plain=False)}
    system = SYSTEM + "\n" + tools_prompt(tools)
    llm = LLMService(default_model_path(), n_ctx=1024, max_tokens=48, temperature=0.0, parallel=1)
    await llm.start()

    def valid(text: str) -> bool:
        try:
            call = parse(text)
            if call is None or call.tool not in by_name:
                return False
            by_name[call.tool].validate(call.arguments)
            return True
        except HeroError:
            return False

    best: dict[str, dict[str, float]] = {}
    try:
        for grammar in grammars.values():  # warm-up: the model loaded, each grammar parsed once
            _ = [d async for d in llm.stream("w" * 64, [{"role": "user", "content": "hi"}], max_tokens=4,
                                             grammar=grammar)]
        modes = list(grammars)
        for r in range(repeats):
            for mode in modes[r % 3:] + modes[:r % 3]:  # each mode first in turn: the machine's load moves
                grammar = grammars[mode]
                turn_s, tokens, calls, plain = 0.0, 0, 0, 0
                for i, ask in enumerate(ASKS):
                    usage: dict[str, Any] = {}
                    messages = [{"role": "system", "content": system}, {"role": "user", "content": ask}]
                    started = time.perf_counter()
                    text = "".join([d async for d in llm.stream(
                        f"{mode[0]}{i:x}".ljust(64, "0"), messages, max_tokens=48, temperature=0.0, usage=usage,
                        grammar=grammar)])
                    turn_s += time.perf_counter() - started
                    tokens += int(usage.get("completion_tokens", 0))
                    calls += valid(text)
                    plain += not text.lstrip().startswith("{")
                run = {"turn_ms": turn_s / len(ASKS) * 1e3, "ms_per_token": turn_s / max(1, tokens) * 1e3,
                       "tokens": tokens, "calls": calls, "plain": plain}
                if mode not in best or run["ms_per_token"] < best[mode]["ms_per_token"]:
                    best[mode] = run
    finally:
        await llm.aclose()
    return [{"name": f"grammar.{mode}", **figures} for mode, figures in best.items()]


def ratio(figures: dict[str, dict[str, Any]], a: str, b: str, key: str = "p50_ms") -> str:
    return f"{figures[a][key] / figures[b][key]:.2f}x"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    parser.add_argument("--skip-llm", action="store_true", help="without the model (no grammar figures)")
    parser.add_argument("--repeats", type=int, default=3, help="grammar runs per mode; the best is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = 60 if args.quick else 600
    results = await dispatch(n) + await worker(n * 5)
    if not args.skip_llm:
        results += await grammar_turns(1 if args.quick else args.repeats)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    by = {r["name"]: r for r in results}
    for r in results:
        if "p50_ms" in r:
            print(f"{r['name']:22} n={r['n']:5}  p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms")
        else:
            print(f"{r['name']:22} {r['turn_ms']:8.1f} ms/turn  {r['ms_per_token']:6.2f} ms/token  "
                  f"{r['tokens']} tokens; of {len(ASKS)} asks: {r['calls']} schema-valid calls, {r['plain']} plain, "
                  f"{len(ASKS) - r['calls'] - r['plain']} broken calls")
    print(f"slash command / Ping      {ratio(by, 'dispatch.slash', 'dispatch.ping')} (p50)")
    print(f"slash command / plain turn {ratio(by, 'dispatch.slash', 'dispatch.plain')} (p50)")
    print(f"/call tool / slash command {ratio(by, 'dispatch.call', 'dispatch.slash')} (p50)")
    print(f"another agent's slash command beside a CPU-bound skill / calm "
          f"{ratio(by, 'dispatch.beside_burning', 'dispatch.beside_calm')} (p50), "
          f"{ratio(by, 'dispatch.beside_burning', 'dispatch.beside_calm', 'p99_ms')} (p99)")
    print(f"skill runner / to_thread   {ratio(by, 'worker.runner_sync', 'worker.to_thread')} sync, "
          f"{ratio(by, 'worker.runner_async', 'worker.to_thread')} async (p50)")
    if "grammar.grammar" in by:
        print(f"grammar / free per token   {ratio(by, 'grammar.grammar', 'grammar.free', 'ms_per_token')}, "
              f"forced call / free {ratio(by, 'grammar.forced', 'grammar.free', 'ms_per_token')}")


if __name__ == "__main__":
    asyncio.run(main())
