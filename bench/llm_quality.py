"""Replies a person can read: the share of degenerate replies at the node's defaults, before and after.

A fixed set of 24 single-turn prompts and 4 three-turn conversations (36 replies per seed), sent the
way the default agent sends them (its system prompt, then the history), at the node's defaults
(temperature 0.7, max_tokens 256, n_ctx 2048). A reply is degenerate if a word 3-gram occurs 5 or more
times in it (a loop: "cephalopod cephalopod …", "I'm not sure. I'm not sure …"), or if it repeats a
previous assistant message of its conversation (word-sequence similarity ≥ 0.8).

"before" is what the node did until now: llama-cpp-python's `create_chat_completion` with the node's
temperature and the library's other defaults (top-k 40, top-p 0.95, min-p 0.05, no penalties). "after" is
the LLM service with its default sampler chain. `--grid` also runs the candidate chains the defaults were
chosen from. Each configuration runs with the same seeds.

    .venv/bin/python bench/llm_quality.py [--seeds 2] [--grid] [--threads N] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.assistant import SYSTEM
from hero.scheduler.llm import LLMService
from hero.scheduler.model import default_model_path
from hero.scheduler.sampling import Sampling

N_CTX, MAX_TOKENS, TEMPERATURE = 2048, 256, 0.7  # the node's defaults

SINGLE = [
    "Hi!",
    "Thanks, that helped.",
    "What can you do?",
    "Tell me about octopuses.",
    "What is the capital of Australia?",
    "How do I boil an egg?",
    "Give me three ideas for dinner tonight.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "What is 17 times 3?",
    "I'm not sure what to do this weekend. Any ideas?",
    "Explain what a computer virus is.",
    "How can I be more productive in the morning?",
    "Translate 'good morning' into Spanish.",
    "What's the difference between weather and climate?",
    "Tell me a fun fact about space.",
    "Summarise the story of Cinderella in two sentences.",
    "What should I consider when buying a used car?",
    "How do plants drink water?",
    "Suggest a name for a grey cat.",
    "What are the benefits of walking every day?",
    "Can you explain recursion simply?",
    "I have a headache. What can I do?",
    "Describe the ocean to someone who has never seen it.",
]
CONVERSATIONS = [
    ["Hi, I'm planning a trip to Japan.", "What should I pack?", "Thanks! Which food should I try there?"],
    ["Can you help me write a short poem?", "Make it about the sea.", "Now make it shorter."],
    ["What is photosynthesis?", "Explain it to a child.", "Why are leaves green?"],
    ["I feel tired lately.", "I only sleep five hours a night.", "How can I sleep better?"],
]
REPLIES_PER_SEED = len(SINGLE) + sum(len(c) for c in CONVERSATIONS)

CANDIDATES = {  # the chains the defaults were chosen from
    "no penalties": Sampling(repeat_penalty=1.0, dry_multiplier=0.0),
    "repeat 1.1": Sampling(repeat_penalty=1.1, dry_multiplier=0.0),
    "repeat 1.3": Sampling(repeat_penalty=1.3, dry_multiplier=0.0),
    "DRY 0.8": Sampling(repeat_penalty=1.0, dry_multiplier=0.8),
    "repeat 1.1 + presence 0.3": Sampling(repeat_penalty=1.1, presence_penalty=0.3, dry_multiplier=0.0),
    "repeat 1.1 + DRY 0.8": Sampling(repeat_penalty=1.1, dry_multiplier=0.8),
}


@dataclass
class Reply:
    prompt: str
    turn: int
    text: str
    cut: bool
    verdict: str | None = None  # "loop" | "copy" | None


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def loops(text: str) -> bool:
    """A word 3-gram that occurs 5 or more times."""
    w = words(text)
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(w) - 2):
        gram = tuple(w[i : i + 3])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= 5:
            return True
    return False


def copies(text: str, previous: list[str]) -> bool:
    mine = words(text)
    return any(mine and SequenceMatcher(None, mine, words(p)).ratio() >= 0.8 for p in previous)


def judge(reply: Reply, previous: list[str]) -> Reply:
    reply.verdict = "loop" if loops(reply.text) else "copy" if copies(reply.text, previous) else None
    return reply


async def hero_run(llm: LLMService, sampling: Sampling, seed: int, singles: list[str],
                   conversations: list[list[str]]) -> list[Reply]:
    async def ask(history: list[dict[str, str]], n: int) -> tuple[str, bool]:
        usage: dict[str, Any] = {}
        chat = [{"role": "system", "content": SYSTEM}, *history]
        text = "".join([d async for d in llm.stream(f"{seed:08x}{n:056x}", chat, usage=usage,
                                                    sampling=replace(sampling, seed=seed * 1000 + n))])
        return text.strip(), usage.get("finish_reason") == "length"

    async def single(i: int, prompt: str) -> list[Reply]:
        text, cut = await ask([{"role": "user", "content": prompt}], i)
        return [judge(Reply(prompt, 0, text, cut), [])]

    async def conversation(i: int, turns: list[str]) -> list[Reply]:
        history: list[dict[str, str]] = []
        out: list[Reply] = []
        for t, prompt in enumerate(turns):
            history.append({"role": "user", "content": prompt})
            text, cut = await ask(history, 100 + i)
            out.append(judge(Reply(prompt, t, text, cut), [m["content"] for m in history if m["role"] == "assistant"]))
            history.append({"role": "assistant", "content": text})
        return out

    jobs = [single(i, p) for i, p in enumerate(singles)] + [conversation(i, c) for i, c in enumerate(conversations)]
    return [r for batch in await asyncio.gather(*jobs) for r in batch]


def before_run(llama: Any, seed: int, singles: list[str], conversations: list[list[str]]) -> list[Reply]:
    """What the node did before: create_chat_completion, one request at a time."""
    def ask(history: list[dict[str, str]], n: int) -> tuple[str, bool]:
        chat = [{"role": "system", "content": SYSTEM}, *history]
        out = llama.create_chat_completion(chat, max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=seed * 1000 + n)
        choice = out["choices"][0]
        return (choice["message"]["content"] or "").strip(), choice["finish_reason"] == "length"

    replies = []
    for i, prompt in enumerate(singles):
        text, cut = ask([{"role": "user", "content": prompt}], i)
        replies.append(judge(Reply(prompt, 0, text, cut), []))
    for i, turns in enumerate(conversations):
        history: list[dict[str, str]] = []
        for t, prompt in enumerate(turns):
            history.append({"role": "user", "content": prompt})
            text, cut = ask(history, 100 + i)
            previous = [m["content"] for m in history if m["role"] == "assistant"]
            replies.append(judge(Reply(prompt, t, text, cut), previous))
            history.append({"role": "assistant", "content": text})
    return replies


def summary(name: str, replies: list[Reply], seconds: float) -> dict[str, Any]:
    n = len(replies)
    bad = [r for r in replies if r.verdict]
    return {
        "config": name,
        "replies": n,
        "degenerate": len(bad),
        "degenerate_share": len(bad) / n if n else 0.0,
        "loops": sum(1 for r in bad if r.verdict == "loop"),
        "copies": sum(1 for r in bad if r.verdict == "copy"),
        "cut_by_max_tokens": sum(1 for r in replies if r.cut),
        "mean_words": sum(len(words(r.text)) for r in replies) / n if n else 0.0,
        "seconds": round(seconds, 1),
        "examples": [asdict(r) for r in bad[:3]],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per configuration (36 replies each)")
    parser.add_argument("--grid", action="store_true", help="also run the candidate sampler chains")
    parser.add_argument("--quick", action="store_true", help="8 prompts, 1 conversation, 1 seed (a smoke run)")
    parser.add_argument("--skip-before", action="store_true", help="skip the create_chat_completion baseline")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                        help="inference threads (1 is fastest on a busy machine; the replies hardly change)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    singles, conversations, seeds = SINGLE, CONVERSATIONS, list(range(1, args.seeds + 1))
    if args.quick:
        singles, conversations, seeds = SINGLE[:8], CONVERSATIONS[:1], [1]
    model = default_model_path()
    threads = args.threads
    results = []

    if not args.skip_before:
        from llama_cpp import Llama

        llama = Llama(model_path=str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)
        started = time.perf_counter()
        replies = [r for s in seeds for r in await asyncio.to_thread(before_run, llama, s, singles, conversations)]
        results.append(summary("before: create_chat_completion, library defaults", replies,
                               time.perf_counter() - started))
        del llama

    llm = LLMService(model, n_ctx=N_CTX, max_tokens=MAX_TOKENS, temperature=TEMPERATURE, threads=threads)
    await llm.start()
    try:
        configs = {"after: Hero's default chain": llm.sampling}
        if args.grid:
            configs.update({name: replace(s, temperature=TEMPERATURE) for name, s in CANDIDATES.items()})
        for name, sampling in configs.items():
            started = time.perf_counter()
            replies = [r for s in seeds for r in await hero_run(llm, sampling, s, singles, conversations)]
            results.append(summary(name, replies, time.perf_counter() - started))
    finally:
        await llm.aclose()

    load = os.getloadavg()
    if args.json:
        print(json.dumps({"load": load, "seeds": seeds, "results": results}, indent=2))
        return
    print(f"machine: {os.cpu_count()} CPUs, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; seeds {seeds}; "
          f"{len(singles)} prompts + {len(conversations)} conversations per seed")
    print(f"{'configuration':52} {'degenerate':>14} {'loops':>6} {'copies':>7} {'cut':>5} {'words':>6} {'s':>7}")
    for r in results:
        share = f"{r['degenerate']}/{r['replies']} {r['degenerate_share']:.1%}"
        print(f"{r['config']:52} {share:>14} {r['loops']:>6} {r['copies']:>7} {r['cut_by_max_tokens']:>5} "
              f"{r['mean_words']:>6.0f} {r['seconds']:>7.1f}")
    for r in results:
        for ex in r["examples"][:1]:
            print(f"  e.g. [{r['config']}] {ex['verdict']}: {ex['prompt']!r} -> {ex['text'][:160]!r}")


if __name__ == "__main__":
    asyncio.run(main())
