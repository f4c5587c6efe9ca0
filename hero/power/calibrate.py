"""Calibrate this machine: busy loops on 0..N cores, RAPL and/or wall-meter readings, CPU speed, LLM tokens/s.

RAPL sees only CPU and DRAM (12–15 W against 34 W at the wall on a typical
small box), so wall readings typed in by the operator win; RAPL, when
readable, still gives the curve its shape between the wall endpoints.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hero.errors import UsageError
from hero.power.config import POWERCAP_ROOT, PROC_STAT
from hero.power.meter import ProcStat, Rapl
from hero.power.profiles import HardwareProfile

# `cpu_score()` on the calibration reference machine (Hero's 2-vCPU dev VM, best of repeats).
# Shipped profiles' cpu_speed values are relative to it.
REFERENCE_SCORE = 600.0
BUSY_LOOP = "while True:\n    pass\n"


def _work() -> int:
    """A fixed interpreter-bound workload (integer maths and dict stores), like agent code."""
    d: dict[int, int] = {}
    acc = 0
    for i in range(20000):
        acc += i * i % 7
        d[i & 255] = acc
    return acc


def cpu_score(seconds: float = 1.0, rounds: int = 5) -> float:
    """Workload runs per CPU-second on one core, best of `rounds` (the VM it runs on is noisy)."""
    best = 0.0
    per_round = seconds / rounds
    for _ in range(rounds):
        t0 = time.thread_time()
        n = 0
        while time.thread_time() - t0 < per_round:
            _work()
            n += 1
        best = max(best, n / (time.thread_time() - t0))
    return best


@dataclass
class Step:
    busy: int  # busy-loop processes running
    host_utilisation: float
    loop_core_share: float | None = None  # CPU each busy loop got, as a share of a core (< 0.9: machine was busy)
    rapl_w: float | None = None
    wall_w: float | None = None


@dataclass
class Calibration:
    cpus: int
    seconds: float
    steps: list[Step]
    score: float
    rapl: str
    llm: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_speed(self) -> float:
        return self.score / REFERENCE_SCORE

    def to_profile(
        self,
        name: str,
        *,
        wall_idle: float | None = None,
        wall_max: float | None = None,
        budget: float | None = None,
    ) -> HardwareProfile:
        n = len(self.steps) - 1
        us = [s.busy / n for s in self.steps] if n > 0 else [0.0]
        walls = [s.wall_w for s in self.steps]
        rapls = [s.rapl_w for s in self.steps]
        curve: list[tuple[float, float]] = []
        rapl_idle: float | None = None
        if all(w is not None for w in walls) and n > 0:
            curve = list(zip(us, _rising([w for w in walls if w is not None]), strict=True))
            idle, peak, source = curve[0][1], curve[-1][1], "calibrated-wall"
            if rapls[0] is not None:
                rapl_idle = min(rapls[0], idle)
        elif wall_idle is not None and wall_max is not None:
            idle, peak, source = wall_idle, wall_max, "calibrated-wall"
            if all(r is not None for r in rapls) and n > 0:
                rs = _rising([r for r in rapls if r is not None])
                span = rs[-1] - rs[0]
                if span > 0:
                    curve = [(u, idle + (peak - idle) * (r - rs[0]) / span) for u, r in zip(us, rs, strict=True)]
                rapl_idle = min(rs[0], idle)
        elif all(r is not None for r in rapls) and n > 0:
            rs = _rising([r for r in rapls if r is not None])
            curve = list(zip(us, rs, strict=True))
            idle, peak, source = rs[0], rs[-1], "calibrated-rapl"
            rapl_idle = idle
        else:
            peak = budget or 60.0
            idle, source = 0.25 * peak, "default"
        if peak <= idle:
            raise UsageError(f"calibration found max {peak:.1f} W not above idle {idle:.1f} W; check the readings")
        if budget is None:
            budget = 60.0 if idle < 60.0 < peak else peak
        return HardwareProfile(
            name=name,
            description=f"calibrated on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            source=source,
            cores=self.cpus,
            ram_gb=round(psutil.virtual_memory().total / 2**30, 1),
            idle_w=idle,
            max_w=peak,
            budget_w=budget,
            cpu_speed=round(self.cpu_speed, 3),
            curve=tuple((round(u, 4), round(w, 3)) for u, w in curve) if len(curve) >= 2 else (),
            rapl_idle_w=rapl_idle,
            llm_tokens_per_s=self.llm.get("tokens_per_s"),
            llm_threads=self.llm.get("threads"),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu_speed"] = self.cpu_speed
        return out


def _rising(values: list[float]) -> list[float]:
    """Readings are noisy; a power curve never falls as load rises."""
    out: list[float] = []
    for v in values:
        out.append(max(v, out[-1]) if out else v)
    return out


def run_steps(
    *,
    cores: int,
    seconds: float,
    ask_wall: Callable[[int, int], float | None] | None = None,
    powercap_root: Path = POWERCAP_ROOT,
    proc_stat: Path = PROC_STAT,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[list[Step], str]:
    """Measure with 0..cores busy-loop processes; ask for a wall reading at each step if `ask_wall` is given."""
    stat = ProcStat(proc_stat)
    rapl, reason = Rapl.probe(powercap_root)
    steps: list[Step] = []
    for busy in range(cores + 1):
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            time.sleep(min(0.5, seconds / 2))  # let the loops start and the clock governor settle
            c0 = stat.read()
            if rapl:
                rapl.read_joules()
            t0 = time.monotonic()
            time.sleep(seconds)
            dt = time.monotonic() - t0
            c1 = stat.read()
            rapl_w = rapl.read_joules() / dt if rapl else None
            wall = ask_wall(busy, cores) if ask_wall else None
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
        alive = time.monotonic() - started
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        loops_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        share = loops_cpu / (busy * alive) if busy else None
        d_total = c1.total - c0.total
        u = (c1.busy - c0.busy) / d_total if d_total > 0 else 0.0
        step = Step(busy=busy, host_utilisation=u, loop_core_share=share, rapl_w=rapl_w, wall_w=wall)
        say(
            f"  {busy}/{cores} cores busy: utilisation {u:.2f}"
            + (f", RAPL {rapl_w:.1f} W" if rapl_w is not None else "")
            + (f", wall {wall:.1f} W" if wall is not None else "")
            + (
                f" — warning: each loop got only {share:.0%} of a core; the machine is busy"
                if share and share < 0.9
                else ""
            )
        )
        steps.append(step)
    return steps, reason


def measure_llm(threads: int) -> dict[str, Any]:
    """Tokens/s of the default model with `threads` threads, or why the step was skipped."""
    try:
        from llama_cpp import Llama
    except Exception as e:  # not built yet, or built without a usable backend
        return {"skipped": f"llama_cpp cannot be imported ({type(e).__name__}: {e})"}
    from hero.scheduler.model import default_model_path

    try:
        path = default_model_path()
    except UsageError as e:
        return {"skipped": e.message}
    t0 = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = llm.create_completion("The three laws of thermodynamics are", max_tokens=48, temperature=0.0, stream=False)
    gen_s = time.perf_counter() - t0
    assert isinstance(out, dict)  # stream=False gives one response, not an iterator
    tokens = int(out["usage"]["completion_tokens"])
    return {
        "model": path.name,
        "threads": threads,
        "load_seconds": round(load_s, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / gen_s, 2) if gen_s > 0 else None,
    }


def calibrate(
    *,
    seconds: float = 3.0,
    cores: int | None = None,
    ask_wall: Callable[[int, int], float | None] | None = None,
    llm: bool = True,
    powercap_root: Path = POWERCAP_ROOT,
    proc_stat: Path = PROC_STAT,
    say: Callable[[str], None] = lambda _m: None,
) -> Calibration:
    cpus = os.cpu_count() or 1
    n = cpus if cores is None else cores
    if not 1 <= n <= cpus:
        raise UsageError(f"--cores must be between 1 and {cpus}")
    if seconds <= 0:
        raise UsageError("--seconds must be > 0")
    say(f"calibrating: 0..{n} busy cores, {seconds:g} s each")
    steps, reason = run_steps(
        cores=n, seconds=seconds, ask_wall=ask_wall, powercap_root=powercap_root, proc_stat=proc_stat, say=say
    )
    say(f"  RAPL: {reason}")
    score = cpu_score(seconds=min(2.0, max(0.2, seconds)))
    say(f"  CPU speed: {score / REFERENCE_SCORE:.2f} × the reference machine")
    llm_result = measure_llm(threads=n) if llm else {"skipped": "--no-llm"}
    say(
        f"  LLM: {llm_result['tokens_per_s']} tokens/s with {llm_result['threads']} threads"
        if "tokens_per_s" in llm_result
        else f"  LLM: skipped ({llm_result['skipped']})"
    )
    return Calibration(cpus=n, seconds=seconds, steps=steps, score=score, rapl=reason, llm=llm_result)
