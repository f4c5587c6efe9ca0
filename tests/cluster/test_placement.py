"""Placement: where a new or waking agent goes (pinned home, power headroom, room, the user's latency)."""

from __future__ import annotations

import subprocess
import sys

from hero.cluster.placement import place
from tests.conftest import ROOT


def node(node_id: str, *, headroom_w: float = 30.0, budget_w: float = 60.0, active: int = 0, capacity: int = 100,
         over_budget: bool = False, free_ram_mb: float = 4096.0, name: str = "") -> dict[str, object]:
    return {"node_id": node_id, "name": name or node_id, "headroom_w": headroom_w, "budget_w": budget_w,
            "active": active, "capacity": capacity, "over_budget": over_budget, "free_ram_mb": free_ram_mb}


def test_a_pinned_home_wins_by_id_or_name_while_it_is_up() -> None:
    nodes = [node("n1", headroom_w=50), node("n2", headroom_w=1, name="box:8000")]
    assert place("agent", nodes, home="n2") == "n2"
    assert place("agent", nodes, home="box:8000") == "n2"
    assert place("agent", nodes, home="gone:8000") == "n1"  # home down: the best of the others


def test_the_node_with_power_headroom_and_room_is_chosen() -> None:
    nodes = [node("tight", headroom_w=5), node("roomy", headroom_w=40), node("full", headroom_w=40, active=95)]
    assert place("agent", nodes) == "roomy"


def test_a_node_over_budget_or_short_of_memory_is_passed_over_unless_all_are() -> None:
    hot = node("hot", headroom_w=50, over_budget=True)
    short = node("short", headroom_w=50, free_ram_mb=64)
    assert place("agent", [hot, short, node("cool", headroom_w=2)]) == "cool"
    assert place("agent", [hot]) == "hot"  # nowhere better: still served
    assert place("agent", []) is None


def test_the_users_latency_counts_and_ties_go_the_same_way_for_one_agent() -> None:
    nodes = [node("near"), node("far")]
    assert place("agent", nodes, latency_ms={"near": 1.0, "far": 40.0}) == "near"
    picks = {place(f"agent-{i}", nodes) for i in range(40)}
    assert picks == {"near", "far"}  # equal nodes share the agents
    assert all(place(f"agent-{i}", nodes) == place(f"agent-{i}", list(reversed(nodes))) for i in range(40))


def test_a_lone_node_never_imports_ray() -> None:
    code = ("import sys, hero.cli, hero.server, hero.web.app, hero.runtime.node; "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
