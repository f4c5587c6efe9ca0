"""`hero calibrate`: measure this machine and write a hardware profile for `hero up --profile`."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from hero.errors import UsageError
from hero.power.calibrate import calibrate


def add_power_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure this machine's power curve and write a hardware profile",
        description=(
            "Runs busy loops on 0..N cores, reads RAPL where readable, measures CPU speed and llama.cpp "
            "tokens/s, and writes a profile TOML. Give wall-meter readings for honest figures (RAPL sees only "
            "CPU and DRAM): --wall-idle/--wall-max, or type one per step when stdin is a terminal."
        ),
    )
    p.add_argument("--out", type=Path, help="profile file to write (default ./NAME.toml)")
    p.add_argument("--name", help="profile name (default calibrated-HOSTNAME)")
    p.add_argument("--wall-idle", type=float, metavar="W", help="wall-meter watts with the node idle")
    p.add_argument("--wall-max", type=float, metavar="W", help="wall-meter watts with every core busy")
    p.add_argument("--budget", type=float, metavar="W", help="power budget (default 60 W, or max if below)")
    p.add_argument("--seconds", type=float, default=3.0, metavar="S", help="seconds per step (default 3)")
    p.add_argument("--cores", type=int, help="busy-loop up to this many cores (default all)")
    p.add_argument("--no-llm", action="store_true", help="skip the llama.cpp tokens/s step")
    p.add_argument("--no-prompt", action="store_true", help="never ask for wall readings")
    p.add_argument("--json", action="store_true", help="print the measurements and profile as JSON")
    p.set_defaults(func=cmd_calibrate)


def _prompt_wall(busy: int, cores: int) -> float | None:
    while True:
        raw = input(f"  {busy}/{cores} cores busy: wall-meter watts (Enter to skip)? ").strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            print("  a number of watts, e.g. 23.5", file=sys.stderr)
            continue
        if value > 0:
            return value
        print("  watts must be > 0", file=sys.stderr)


def cmd_calibrate(args: argparse.Namespace) -> int:
    if (args.wall_idle is None) != (args.wall_max is None):
        raise UsageError("give both --wall-idle and --wall-max, or neither")
    if args.wall_idle is not None and not 0 < args.wall_idle < args.wall_max:
        raise UsageError("--wall-idle must be > 0 and below --wall-max")
    if args.budget is not None and args.budget <= 0:
        raise UsageError("--budget must be > 0")
    name = args.name or f"calibrated-{socket.gethostname().split('.')[0].lower()}"
    out = args.out or Path(f"{name}.toml")
    interactive = args.wall_idle is None and not args.no_prompt and sys.stdin.isatty()
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    if interactive:
        say("At each step, read the wall meter once the reading settles and type it in.")
    result = calibrate(
        seconds=args.seconds,
        cores=args.cores,
        ask_wall=_prompt_wall if interactive else None,
        llm=not args.no_llm,
        say=say,
    )
    profile = result.to_profile(name, wall_idle=args.wall_idle, wall_max=args.wall_max, budget=args.budget)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# written by `hero calibrate`\n{profile.to_toml()}")
    if args.json:
        print(json.dumps({"profile_path": str(out), "profile": _profile_json(profile), **result.to_json()}))
    else:
        print(
            f"wrote {out}: idle {profile.idle_w:.1f} W, max {profile.max_w:.1f} W, budget {profile.budget_w:.1f} W "
            f"({profile.source}); use it with: hero up --profile {out}"
        )
    return 0


def _profile_json(profile: object) -> dict[str, object]:
    from dataclasses import asdict

    data = asdict(profile)  # type: ignore[call-overload]
    data.pop("path", None)
    return data
