"""`hero bench node`: the short run (20 agents, 30 s) against a real `hero up`, and the report's invariants;
and the seeded workload it plays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hero.bench.workload import CHAT, MESSAGES_PER_SESSION, REMINDER, make_workload

ROOT = Path(__file__).resolve().parents[1]
NAMED_FIELDS = (
    "agents", "registered", "duration_s", "profile", "budget_watts", "watts_per_agent_mean", "watts_per_agent_p95",
    "node_watts_max_5s", "ttft_p50_s", "ttft_p99_s", "messages_sent", "messages_answered", "messages_refused",
    "energy_per_message_j", "max_agents_within_budget", "modelled",
)
PLOTS = ("node_watts.png", "agent_watts.png", "latency_cdf.png", "agents_awake.png", "cpu_by_part.png")
SEED, RATE = 6, 180.0  # this seed's plan has two sessions opening with a reminder in the first 25 s


def test_workload_is_reproducible_and_within_its_documented_bounds() -> None:
    a = make_workload(50, 600, rate=12, seed=3)
    assert a == make_workload(50, 600, rate=12, seed=3)
    assert a.users != make_workload(50, 600, rate=12, seed=4).users
    # user i's plan depends only on the seed and i: adding users does not reshuffle the others
    assert make_workload(80, 600, rate=12, seed=3).users[:50] == a.users
    many = make_workload(400, 3600, rate=12, seed=1)
    sessions = [s for u in many.users for s in u.sessions]
    assert all(MESSAGES_PER_SESSION[0] <= len(s.messages) <= MESSAGES_PER_SESSION[1] for s in sessions)
    assert all(0 <= s.start_s < 3600 for s in sessions)
    assert 0.8 < many.planned_messages / (400 * 12) < 1.2  # the rate is the mean
    reminders = [m for s in sessions for m in s.messages if m.kind == REMINDER]
    assert reminders and all(5 <= (m.reminder_s or 0) <= 180 for m in reminders)
    assert all(m.reminder_text and m.reminder_text in m.text for m in reminders)


def test_the_short_runs_plan_sets_reminders_that_fire_during_the_run() -> None:
    plan = make_workload(20, 30, rate=RATE, seed=SEED)
    first = [(s.start_s, s.messages[0]) for u in plan.users for s in u.sessions]
    assert sum(m.kind == REMINDER and t < 25 and (m.reminder_s or 99) <= 10 for t, m in first) >= 2
    assert sum(m.kind == CHAT for u in plan.users for s in u.sessions for m in s.messages) > 10


@pytest.mark.model
def test_bench_node_short_run_keeps_the_reports_invariants(tmp_path: Path) -> None:
    report = tmp_path / "report"
    env = {**os.environ, "HERO_MAX_TOKENS": "12", "HERO_N_CTX": "1024", "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run(
        [sys.executable, "-m", "hero.cli", "bench", "node", "--agents", "20", "--registered", "30",
         "--duration", "30", "--rate", str(RATE), "--seed", str(SEED), "--idle-after", "5", "--drain", "60",
         "--json", "--report", str(report)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(done.stdout)

    for name in NAMED_FIELDS:
        assert name in s, name
    assert (s["agents"], s["registered"], s["duration_s"], s["profile"]) == (20, 30, 30.0, "zos-edge-60w")
    assert s["max_agents_within_budget"] is None  # not searched
    assert s["modelled"] is True  # no RAPL on this VM: watts come from the profile's model

    # every message answered or explicitly refused; none lost, none kept twice
    assert s["messages_sent"] > 10
    assert s["messages_sent"] == s["messages_answered"] + s["messages_refused"]
    assert s["messages_lost"] == 0
    inv = s["invariants"]
    assert inv["sent_is_answered_plus_refused"] and inv["none_lost"] and inv["history_seq_increasing"]
    # watts conserved on one window: idle + Σ agents + runtime + other = node within 5 %, on every sampled window
    assert s["power_windows_checked"] >= 5
    assert s["conservation_error_max"] <= 0.05 and inv["watts_conserved"]
    # no agent was active on two activations: its state versions' epochs never go back
    assert inv["single_activation"]
    assert s["activations"] >= 1 and s["hibernations"] >= 1
    # reminders were set, fired during the run and every one reached its user
    assert s["reminders_set"] >= 2
    assert s["reminders_fired"] == s["reminders_delivered"] == s["reminders_set"]
    assert inv["reminders_delivered"]
    # the figures exist and are sane
    assert s["ttft_p50_s"] is not None and 0 < s["ttft_p50_s"] <= s["ttft_p99_s"]
    assert 0 < s["watts_per_agent_dynamic_mean"] < s["watts_per_agent_mean"]
    assert s["node_watts_max_5s"] >= s["node_watts_mean"] > 0
    assert s["energy_per_message_j"] > 0 and s["qss_bytes_per_message"] > 0
    assert s["cpu_s"]["by_part"]["llm"] > 0  # the split by part is sampled (20 Hz): small parts may read 0

    # the report: Markdown, valid PNGs, the node's DuckDB power history
    assert (report / "README.md").read_text().startswith("# Hero node benchmark")
    for name in PLOTS:
        with Image.open(report / name) as image:
            image.verify()
            assert image.format == "PNG"
    assert (report / "power.duckdb").stat().st_size > 0
    assert json.loads((report / "summary.json").read_text())["messages_sent"] == s["messages_sent"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--agents", "0"], "--agents must be >= 1"),
        (["--agents", "10", "--registered", "5"], "--registered must be >= --agents"),
        (["--duration", "-3"], "--duration must be > 0"),
        (["--rate", "nan"], "--rate must be >= 0"),
        (["--profile", "nope"], "unknown hardware profile 'nope'"),
    ],
)
def test_misuse_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "hero.cli", "bench", "node", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr
