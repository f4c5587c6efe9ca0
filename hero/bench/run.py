"""One `hero bench node` run, start to end: users, seeding, the measured node, the load, the audits.

1. A fresh data dir; `registered` users added (as `hero user add` does).
2. Seeding: a first `hero up` gets one message from every registered user ("remember that my name
   is …", a skill, no model), so every agent has stored state; stopping that node hibernates them all.
3. The measured `hero up` starts on the same data dir: every agent hibernated, none in memory.
4. Snapshots of the node's own figures, the load (`loadgen`), snapshots again, histories audited.
5. The node is stopped (SIGTERM); its store and its DuckDB power history are read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from hero.bench.audit import audit_epochs, audit_histories, backend_bytes, read_power_history
from hero.bench.client import auth, make_client
from hero.bench.loadgen import LoadResult, LoadRun
from hero.bench.nodeproc import BenchUser, NodeProcess, create_users, free_port
from hero.bench.progress import Progress
from hero.bench.workload import DEFAULT_RATE, Workload, make_workload
from hero.power.calibrate import REFERENCE_SCORE, cpu_score

SEED_CONCURRENCY = 16
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BenchConfig:
    agents: int
    registered: int
    duration_s: float
    profile: str = "zos-edge-60w"
    rate: float = DEFAULT_RATE
    seed: int = 1
    idle_after_s: float | None = None  # None: the node's own default (its config, env, hero.toml)
    host_speed: float | None = None  # None: measured here with the calibration workload
    cpu_parts_hz: float = 20.0  # the node samples its CPU by part (hero/power/parts.py) at this rate
    drain_s: float = 600.0
    progress: bool = False
    data_dir: Path | None = None  # None: a temp dir, removed afterwards (the report keeps what matters)
    template: Path | None = None  # a seeded data dir to copy instead of seeding (the search reuses one)
    keep_data: bool = False
    keep_history: Path | None = None  # copy the node's DuckDB power history here (the report's dir)


@dataclass
class Snapshot:
    unix: float
    power: dict[str, Any]
    status: dict[str, Any]
    backend_bytes: int
    node_cpu: dict[str, float]  # the hero process: user, system
    bench_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    loadavg: tuple[float, ...]
    node_rss_mb: float = 0.0
    node_rss_peak_mb: float = 0.0  # VmHWM: the most the node process has held since it started


@dataclass
class RunRecord:
    config: BenchConfig
    workload: Workload
    host_speed: float
    host_speed_measured: bool
    machine: dict[str, Any]
    phases_s: dict[str, float]  # wall time of each step of the run (users, seeding, node start, load, audits)
    start: Snapshot
    end: Snapshot
    load: LoadResult
    history_audit: Any
    epoch_audit: Any
    power_history: dict[str, Any]
    metrics_text: str
    node_output: list[str]
    node_exit: int | None
    users: list[BenchUser] = field(repr=False)
    data_dir: Path | None = None


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):  # no /proc: the model stays unknown
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": sys.version.split()[0], "kernel": os.uname().release, **source_version()}


def source_version() -> dict[str, Any]:
    """The commit the node ran, and how many of its source files differed from it (others edit the tree)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hero", "agents"],
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted_files": None}
    return {"commit": commit or None, "uncommitted_files": [line[3:] for line in dirty]}


async def seed(node: NodeProcess, client: httpx.AsyncClient, users: list[BenchUser]) -> None:
    """One skill message per user: their agent now has stored state (and a fact in its memory)."""
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    failures: list[str] = []

    async def one(user: BenchUser) -> None:
        body = {"model": "hero", "messages": [{"role": "user", "content": f"remember that my name is {user.name}"}]}
        async with gate:
            for _ in range(5):
                response = await client.post(f"{node.url}/v1/chat/completions", json=body, headers=auth(user.token))
                if response.status_code != 429:
                    break
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            if response.status_code != 200:
                failures.append(f"{user.name}: HTTP {response.status_code} {response.text[:200]}")

    await asyncio.gather(*(one(u) for u in users))
    if failures:
        raise RuntimeError(f"seeding failed for {len(failures)} users, e.g. {failures[0]}")


async def seed_node(data: Path, users: list[BenchUser], client: httpx.AsyncClient, *, profile: str,
                    env: dict[str, str]) -> None:
    """A first node on `data` gets one message per user, then stops: every agent is stored and hibernated."""
    seeder = NodeProcess(data, free_port(), profile=profile, idle_after_s=None, env=env)
    await seeder.start()
    try:
        await seed(seeder, client, users)
    finally:
        await seeder.stop()


async def prepare_template(cfg: BenchConfig, data: Path) -> None:
    """A seeded data dir with `cfg.registered` users, for runs that copy it (`BenchConfig.template`)."""
    users, _ = await asyncio.to_thread(create_users, data, cfg.registered)
    async with make_client(64) as client:
        await seed_node(data, users, client, profile=cfg.profile, env={})


async def snapshot(node: NodeProcess, client: httpx.AsyncClient, operator: str) -> Snapshot:
    power = (await client.get(f"{node.url}/api/node/power", headers=auth(operator))).json()
    status = (await client.get(f"{node.url}/api/node/status", headers=auth(operator))).json()
    disk = await asyncio.to_thread(backend_bytes, node.data_dir)
    process = psutil.Process(node.pid)
    cpu = process.cpu_times()
    rss = process.memory_info().rss / 2**20
    peak = _peak_rss_mb(node.pid)
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    return Snapshot(time.time(), power, status, disk,
                    {"user": cpu.user, "system": cpu.system}, time.process_time(), busy,
                    busy + machine.idle + getattr(machine, "iowait", 0.0), os.getloadavg(), rss, peak)


async def settle_timers(node: NodeProcess, client: httpx.AsyncClient, operator: str, start: Snapshot,
                        end: Snapshot, expected: int, tries: int = 5) -> None:
    """A reminder reaches its user during its turn; the node counts it fired when the turn ends, a moment
    later. Re-read the status (at most `tries` seconds) until the count has caught up with what arrived."""
    for _ in range(tries):
        fired = end.status["runtime"]["timers_fired"] - start.status["runtime"]["timers_fired"]
        if fired >= expected:
            return
        await asyncio.sleep(1.0)
        end.status = (await client.get(f"{node.url}/api/node/status", headers=auth(operator))).json()


def _peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):  # gone, or no /proc: unknown
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run_bench(cfg: BenchConfig) -> RunRecord:
    if cfg.agents > cfg.registered:
        raise ValueError("--agents cannot exceed --registered")
    measured = cfg.host_speed is None
    host_speed = cfg.host_speed or round(await asyncio.to_thread(cpu_score) / REFERENCE_SCORE, 3)
    temp = None
    data = cfg.data_dir
    if data is None:
        temp = Path(tempfile.mkdtemp(prefix="hero-bench-"))
        data = temp / "data"
    try:
        return await _run(cfg, data, host_speed, measured)
    finally:
        if temp is not None and not cfg.keep_data:
            await asyncio.to_thread(shutil.rmtree, temp, True)


async def _run(cfg: BenchConfig, data: Path, host_speed: float, measured: bool) -> RunRecord:
    env = {"HERO_HOST_SPEED": str(host_speed), "HERO_CPU_PARTS_HZ": str(cfg.cpu_parts_hz)}
    machine = await asyncio.to_thread(machine_info)  # before the node starts: the source it runs
    workload = make_workload(cfg.agents, cfg.duration_s, rate=cfg.rate, seed=cfg.seed)
    phases: dict[str, float] = {}
    lap = _Laps(phases)
    if cfg.template is not None:
        await asyncio.to_thread(shutil.copytree, cfg.template, data)
    users, operator = await asyncio.to_thread(create_users, data, cfg.registered)
    lap("users")
    async with make_client(cfg.agents + 64) as client:
        if cfg.template is None:
            await seed_node(data, users, client, profile=cfg.profile, env=env)
        lap("seeding")
        node = NodeProcess(data, free_port(), profile=cfg.profile, idle_after_s=cfg.idle_after_s, env=env)
        await node.start()
        lap("node_start")
        progress = Progress(workload, enabled=cfg.progress)
        try:
            start = await snapshot(node, client, operator)
            run = LoadRun(workload, users[: cfg.agents], node.url, operator, client, drain_s=cfg.drain_s,
                          on_sample=progress.update)
            load = await run.run()
            end = await snapshot(node, client, operator)
            await settle_timers(node, client, operator, start, end, len(load.reminders))
            lap("load_and_drain")
            metrics = (await client.get(f"{node.url}/metrics", headers=auth(operator))).text
            histories = await audit_histories(client, node.url, users[: cfg.agents], load.results)
            lap("history_audit")
        finally:
            progress.close()
            exit_code = await node.stop()
    lap("node_stop")
    agent_ids = [u.agent_id for u in users[: cfg.agents]]
    epochs = await audit_epochs(data, agent_ids, start.unix)
    history = await asyncio.to_thread(read_power_history, data / "power.duckdb", start.unix, end.unix, agent_ids)
    if cfg.keep_history is not None:
        cfg.keep_history.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copy2, data / "power.duckdb", cfg.keep_history / "power.duckdb")
    lap("store_and_history_audit")
    return RunRecord(cfg, workload, host_speed, measured, machine, phases, start, end, load, histories,
                     epochs, history, metrics, node.output, exit_code, users, data)


class _Laps:
    """Records the wall time since the previous call under each name."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.mark = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(now - self.mark, 2)
        self.mark = now
