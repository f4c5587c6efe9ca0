"""The real router in a simulated 100-node mesh: convergence, stretch, reroute after hard and silent cuts."""

from __future__ import annotations

import random

from hero.net.sim import Simulation


def test_100_nodes_converge_with_low_stretch_and_reroute_fast() -> None:
    sim = Simulation.random_mesh(100, seed=7)
    sim.start()
    converged_at = sim.run_until(30.0, stop=sim.converged)
    assert sim.converged(), "routes missing after 30 simulated seconds"
    assert converged_at < 5.0
    sim.run_until(converged_at + 5.0)
    mean, worst = sim.stretch(list(range(0, 100, 10)))
    assert mean <= 1.05 and worst < 1.5
    rng = random.Random(1)
    for silent in (False, True):
        for _ in range(3):
            src, dst = rng.sample(range(100), 2)
            path = sim.path(src, dst)
            assert path is not None and len(path) >= 2
            a, b = path[0], path[1]
            cut_at = sim.now
            sim.cut(a, b, silent=silent)
            sim.run_until(cut_at + 10.0, stop=lambda s=src, d=dst: sim.path(s, d) is not None)
            assert sim.path(src, dst) is not None
            assert sim.now - cut_at <= 2.0, f"reroute took {sim.now - cut_at:.2f}s (silent={silent})"
