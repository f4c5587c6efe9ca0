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
            sim.run_until(sim.now + 3.0)  # the rest of the mesh settles before the next cut


def test_a_quiet_mesh_sends_only_hellos_and_its_periodic_dumps() -> None:
    """No failure, no change: no seqno requests or bumps, and updates are the periodic full dumps alone."""
    n = 40
    sim = Simulation.random_mesh(n, seed=3)
    sim.start()
    sim.run_until(30.0, stop=sim.converged)
    sim.run_until(sim.now + 10.0)
    before = sim.stats.update_tlvs
    bumps = sum(r.stats.seqno_bumps for r in sim.routers)
    requests = sum(r.stats.seqno_requests_sent for r in sim.routers)
    minutes = 3
    sim.run_until(sim.now + 60.0 * minutes)
    assert sum(r.stats.seqno_bumps for r in sim.routers) == bumps
    assert sum(r.stats.seqno_requests_sent for r in sim.routers) == requests
    links = 2 * len(sim.links)  # a dump is every route (and our own) to every neighbour, once per interval
    dumps = minutes * 60.0 / sim.config.update_interval_s * links * n
    assert sim.stats.update_tlvs - before <= 1.2 * dumps, (sim.stats.update_tlvs - before, dumps)
