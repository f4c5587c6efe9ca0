"""The node's CPU by part (hero/power/parts.py): a sampled split of real thread CPU time, off by default."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import hero.users.registry
import hero.users.tool
from hero.power.config import PowerConfig
from hero.power.parts import PARTS, PartSampler, part_of_file
from hero.power.service import PowerService


def test_part_rules_pick_the_innermost_known_package() -> None:
    assert part_of_file("/x/site-packages/starlette/routing.py") == "web"
    assert part_of_file("/work/main/hero/store/pipeline.py") == "store"
    assert part_of_file("/work/main/hero/scheduler/llm.py") == "llm"
    assert part_of_file("/usr/lib/python3.11/json/encoder.py") is None
    assert part_of_file(hero.users.registry.__file__) == "web"  # users and tokens: the web's auth work
    assert part_of_file(hero.users.tool.__file__) == "web"


def test_sampler_charges_a_threads_cpu_to_the_part_its_code_is_in(tmp_path: Path) -> None:
    # A busy loop whose frames say hero/store: its CPU must land in `store`, nowhere else.
    code = compile("def spin(stop):\n    while not stop.is_set():\n        sum(range(200))\n",
                   str(tmp_path / "hero" / "store" / "spin.py"), "exec")
    namespace: dict[str, object] = {}
    exec(code, namespace)
    stop = threading.Event()
    cpu: list[float] = []

    def run() -> None:
        t0 = time.thread_time()
        namespace["spin"](stop)  # type: ignore[operator]
        cpu.append(time.thread_time() - t0)

    sampler = PartSampler(100)
    sampler.start()
    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.6)
    stop.set()
    worker.join()
    time.sleep(0.05)
    sampler.stop()
    seconds = sampler.totals()
    assert sampler.samples > 10
    assert seconds["store"] == pytest.approx(cpu[0], rel=0.35)
    assert seconds["web"] == seconds["llm"] == 0.0


async def test_node_report_carries_cpu_by_part_only_when_enabled(tmp_path: Path) -> None:
    off = PowerService("zos-edge-60w", tmp_path / "a", PowerConfig(history=False, cgroup_backstop=False))
    on = PowerService("zos-edge-60w", tmp_path / "b",
                      PowerConfig(history=False, cgroup_backstop=False, cpu_parts_hz=100))
    for service in (off, on):
        await service.start()
    try:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # keep the loop thread busy so there is CPU to split
            sum(range(1000))
            await asyncio.sleep(0)
        report = on.node_report()["cpu"]
        assert off.node_report()["cpu"]["parts"] is None
        assert set(report["parts"]["seconds"]) == set(PARTS)
        assert report["parts"]["samples"] > 0 and sum(report["parts"]["seconds"].values()) > 0
        assert report["runtime_seconds"] >= 0 and report["agents_seconds"] == 0
    finally:
        for service in (off, on):
            await service.aclose()
    assert on.parts is not None and on.parts._thread is None  # the sampler thread was joined
