"""`hero bench node`: run users against a real node and report its figures (see hero/bench/run.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from hero.errors import UsageError
from hero.power.profiles import load_profile

DEFAULT_DURATION_S = 600.0


def add_bench_parser(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks of a running node")
    sub = bench.add_subparsers(parser_class=type(bench), metavar="ACTION", required=True)
    node = sub.add_parser("node", help="simulate users against a real `hero up` and report watts, latency, loss")
    node.add_argument("--agents", type=int, default=200, help="active users during the run (default 200)")
    node.add_argument("--registered", type=int, help="users that exist, hibernated (default: --agents)")
    node.add_argument("--profile", default="zos-edge-60w", help="hardware profile (default zos-edge-60w)")
    node.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds of load (default 600)")
    node.add_argument("--rate", type=float, help="messages per active agent per hour (default: the busy hour, 12)")
    node.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    node.add_argument("--idle-after", type=float, help="the node's idle_after in seconds (default: the node's)")
    node.add_argument("--host-speed", type=float, help="this machine's cpu_speed (default: measured now)")
    node.add_argument("--drain", type=float, default=600.0,
                      help="seconds to wait for replies still coming after the run (default 600)")
    node.add_argument("--json", action="store_true", help="print one JSON object")
    node.add_argument("--report", type=Path, metavar="DIR", help="write a Markdown report, PNG plots, the history")
    node.add_argument("--search", action="store_true", help="also find the largest agent count within the targets")
    node.add_argument("--search-duration", type=float, default=180.0, help="seconds per search run (default 180)")
    node.add_argument("--data", type=Path, help="data dir for the node (default: a temp dir, removed after)")
    node.set_defaults(func=cmd_bench_node)


def _positive(name: str, value: float | None, *, zero: bool = False) -> None:
    if value is not None and (not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
        raise UsageError(f"bench node: {name} must be {'>= 0' if zero else '> 0'}")


def cmd_bench_node(args: argparse.Namespace) -> int:
    from hero.bench.workload import DEFAULT_RATE

    registered = args.registered if args.registered is not None else args.agents
    if args.agents < 1:
        raise UsageError("bench node: --agents must be >= 1")
    if registered < args.agents:
        raise UsageError("bench node: --registered must be >= --agents (active users are registered users)")
    for name, value in (("--duration", args.duration), ("--idle-after", args.idle_after),
                        ("--host-speed", args.host_speed), ("--search-duration", args.search_duration)):
        _positive(name, value)
    _positive("--rate", args.rate, zero=True)
    _positive("--drain", args.drain, zero=True)
    load_profile(args.profile)
    if args.data is not None and args.data.exists() and any(args.data.iterdir()):
        raise UsageError(f"bench node: --data {args.data} is not empty (the run needs a fresh data dir)")
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise UsageError("bench node: needs httpx: pip install 'hero[bench]'") from None
    if args.report is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("bench node: --report needs matplotlib: pip install 'hero[bench]'") from None

    from hero.bench.run import BenchConfig

    cfg = BenchConfig(
        agents=args.agents, registered=registered, duration_s=args.duration, profile=args.profile,
        rate=DEFAULT_RATE if args.rate is None else args.rate, seed=args.seed, idle_after_s=args.idle_after,
        host_speed=args.host_speed, drain_s=args.drain, progress=not args.json, data_dir=args.data,
        keep_data=args.data is not None, keep_history=args.report,
    )
    try:
        summary = asyncio.run(_bench(cfg, args))
    except asyncio.CancelledError:  # SIGTERM: the node was stopped and the temp dir removed on the way out
        raise KeyboardInterrupt from None
    if args.json:
        print(json.dumps(summary))
    else:
        from hero.bench.report import text_summary

        print(text_summary(summary))
    return 0


async def _bench(cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    from hero.bench.figures import compute
    from hero.bench.run import run_bench

    task = asyncio.current_task()
    if task is not None:  # SIGTERM stops the run as Ctrl-C does: the node it started is stopped, not orphaned
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    record = await run_bench(cfg)
    summary = compute(record)
    command = "hero " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "hero bench node …"
    if args.report is not None:  # written now, so a long search cannot lose the main run's report
        await _report(args.report, record, summary, None, command)
    if args.search:
        from hero.bench.search import search_max_agents

        search = await search_max_agents(cfg, args.search_duration, first=summary, log=None if args.json else _say)
        summary["max_agents_within_budget"] = search.best
        summary["search"] = search.to_json()
        if args.report is not None:
            await _report(args.report, record, summary, search, command)
    return summary


async def _report(directory: Path, record: Any, summary: dict[str, Any], search: Any, command: str) -> None:
    from hero.bench.report import write_report

    await asyncio.to_thread(write_report, directory, record, summary, search, command)
    summary["report"] = str(directory / "README.md")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
