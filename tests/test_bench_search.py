"""The search's bisection (hero/bench/search.py), driven by a stand-in for the runs: which counts it probes
and what it concludes when the targets pull both ways."""

from __future__ import annotations

from hero.bench.search import MAX_PROBES, Probe, SearchResult, _Bounds, floor_count, next_count, resolution


def probe(agents: int, low: int, high: int) -> Probe:
    """A run's verdict where the idle share needs >= `low` agents and latency allows <= `high`."""
    missed = tuple(name for name, bad in (("watts_per_agent", agents < low), ("ttft_p99_s", agents > high)) if bad)
    return Probe(agents, not missed, missed, None, 0.0, None, 0, 0, 60.0)


def search(first: int, low: int, high: int, cap: int = 2000) -> tuple[int, list[int]]:
    result = SearchResult(0, 60.0)
    state = _Bounds(floor_count(12.0))
    count: int | None = first
    probed = []
    while count is not None and len(probed) < MAX_PROBES:
        probed.append(count)
        state.add(probe(count, low, high), result)
        count = next_count(state.lo, state.hi, cap)
    return state.best, probed


def test_the_floor_is_where_the_idle_share_alone_meets_the_target() -> None:
    assert floor_count(12.0) == 48  # zos-edge-60w: 12 W idle / 0.25 W


def test_bisects_down_to_the_largest_count_within_the_targets() -> None:
    best, probed = search(200, low=50, high=70)
    assert probed[0] == 200 and all(p >= 48 for p in probed)  # never below the floor
    assert best <= 70 and 70 - best <= resolution(200)


def test_doubles_while_the_count_passes() -> None:
    best, probed = search(100, low=50, high=700)
    assert probed[:4] == [100, 200, 400, 800]
    assert best <= 700 and 700 - best <= resolution(800)


def test_stops_when_no_count_meets_every_target() -> None:
    # latency already fails at 40 agents, below where the idle share is met: the window is empty
    best, probed = search(200, low=55, high=40)
    assert best == 0
    assert len(probed) < MAX_PROBES and probed[-1] < 55  # it stopped at a count that missed both ways
