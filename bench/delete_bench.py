"""Deleting an agent's objects (a user's deletion) with every backend up, and with two down then back.

.venv/bin/python bench/delete_bench.py [--objects N]

Real QSS, 20 directory backends in a temp dir. Prints, best of three: the purge with every backend up (the
baseline, same process); the purge with two backends down (it records what they missed); the retry that
finishes it once they are back; and what the pending record costs `keys()` on a node of 2,000 agents.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from hero.identity import NodeKeys
from hero.store.qss import QSS, open_qss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.store.helpers import plug, unplug  # the tests' way to take a backend's disk away


async def fill(store: QSS, agent: str, objects: int) -> None:
    for i in range(objects):
        await store.put(f"agent/{agent}/history/{i}", bytes([i % 251]) * 20_000, epoch=1)


async def one_round(objects: int) -> tuple[float, float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        store = await open_qss(data, NodeKeys.load_or_create(data))
        try:
            for n in range(2000):  # a node's worth of other keys
                await store.put(f"agent/{n:064x}/state", b"{}", epoch=1)
            await fill(store, "up", objects)
            await fill(store, "down", objects)
            began = time.perf_counter()
            assert not (await store.purge("agent/up/")).pending
            up_s = time.perf_counter() - began

            unplug(data / "backends")
            began = time.perf_counter()
            assert (await store.purge("agent/down/")).pending
            down_s = time.perf_counter() - began

            began = time.perf_counter()
            await store.keys("agent/")
            keys_pending_s = time.perf_counter() - began

            plug(data / "backends")
            began = time.perf_counter()
            await store.purges.retry()
            retry_s = time.perf_counter() - began
            assert not await store.purges.status()

            began = time.perf_counter()
            await store.keys("agent/")
            keys_s = time.perf_counter() - began
            return up_s, down_s, retry_s, keys_s, keys_pending_s
        finally:
            await store.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=40, help="objects of the deleted agent (20 KB each)")
    args = parser.parse_args()
    logging.getLogger("hero.store").setLevel(logging.ERROR)  # the backends going and coming back are the point
    rounds = [await one_round(args.objects) for _ in range(3)]
    up, down, retry, keys, keys_pending = (min(r[i] for r in rounds) for i in range(5))
    print(f"purge of {args.objects} objects, every backend up: {up * 1e3:.1f} ms (baseline)")
    print(f"same, two backends down (recorded as pending): {down * 1e3:.1f} ms ({down / up:.2f}x)")
    print(f"the retry once they are back (finishes it): {retry * 1e3:.1f} ms ({retry / up:.2f}x)")
    print(f"keys() of 2,040 keys: {keys * 1e3:.1f} ms with nothing pending, {keys_pending * 1e3:.1f} ms with one "
          f"purge pending ({keys_pending / keys:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
