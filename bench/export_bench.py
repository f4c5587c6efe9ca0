"""Export of a user's history (`GET /api/me/export`'s body) as the history grows: time and peak memory.

    .venv/bin/python bench/export_bench.py [--sizes 10000,50000] [--paged-only] [--http]

The export streams the history oldest first through the chat seam (`Histories.stream`, each sealed
segment read once) into the response's JSON pieces (`hero.web.me_api.history_json`). The baseline, in
the same process on the same store, is the export as it was first written: two passes of `page(before=…)`
through the seam (one to find where each page of 500 begins, one to read them again, oldest first).
Each agent is seeded with N messages in the old single-object layout, activated (migrated into
segments) and hibernated, so every read comes from QSS. Time is the best of three runs; peak memory is
tracemalloc's peak over one more run (Python allocations during the export, above what was held before).
With `--http`, the whole `GET /api/me/export` instead: a real node and uvicorn on 127.0.0.1, read by
httpx in the same process (the memory is the server's and the client's together); run it on an older
tree to compare with the export as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from runtime_bench import Echo, seeded

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest: a real HTTP server

from hero.chat.histories import Histories
from hero.config import NodeConfig
from hero.identity import NodeKeys, UserKey
from hero.runtime.events import Ping
from hero.runtime.keys import state_key
from hero.runtime.node import Node
from hero.server import open_store

Method = Callable[[Histories, str], AsyncIterator[str]]
PAGE = 500  # entries a piece (and, for the baseline, a page), as the export writes them


async def streamed(chat: Histories, agent: str) -> AsyncIterator[str]:
    """Today's export body: the history streamed, written out a piece at a time."""
    from hero.web.me_api import history_json

    async for piece in history_json(chat.stream(agent), page=PAGE):
        yield piece


async def paged(chat: Histories, agent: str) -> AsyncIterator[str]:
    """The export as first written: every page's `before` found by paging back, then each page read again."""
    first = await chat.page(agent, limit=PAGE)
    bounds = [first.entries[-1].seq + 1] if first.entries else []
    cursor = first.next_before if first.has_more else None
    while cursor is not None:
        bounds.append(cursor)
        older = await chat.page(agent, limit=PAGE, before=cursor)
        cursor = older.next_before if older.has_more else None
    for before in reversed(bounds):
        entries = (await chat.page(agent, limit=PAGE, before=before)).entries
        yield ",".join(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) for e in entries)


async def best_and_peak(run: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """Best time of three runs of `run` (which returns the bytes it wrote), the peak traced memory (MiB) of
    one more, and the bytes."""
    times = []
    for _ in range(3):
        began = time.perf_counter()
        size = await run()
        times.append(time.perf_counter() - began)
    tracemalloc.start()
    tracemalloc.reset_peak()
    held = tracemalloc.get_traced_memory()[0]
    await run()
    peak = tracemalloc.get_traced_memory()[1] - held
    tracemalloc.stop()
    return min(times), peak / 2**20, size


async def measure(body: Callable[[], AsyncIterator[str]], expected: int) -> tuple[float, float]:
    """Best time of three and peak traced memory (MiB) of writing the whole body; checks its size."""

    async def consume() -> int:
        size = 0
        async for piece in body():
            size += len(piece)
        assert abs(size - expected) <= expected // 1000 + 2, (size, expected)
        return size

    seconds, peak, _ = await best_and_peak(consume)
    return seconds, peak


async def figures(data: Path, messages: int, methods: dict[str, Method]) -> None:
    keys = NodeKeys.load_or_create(data)
    store = await open_store(NodeConfig(data_dir=data), keys)
    node = Node(store, None, Echo, node_id=keys.node_id, idle_after_s=3600)  # type: ignore[arg-type]
    agent = UserKey.generate().agent_id
    entries = seeded(messages)
    await store.put(state_key(agent), json.dumps({"history": entries}).encode(), epoch=1)
    await (await node.deliver(agent, Ping())).wait_accepted()  # activated: migrated into segments
    await node.hibernate(agent)
    await node.settle()
    chat = Histories(node)
    expected = len(",".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries))
    results = {}
    for name, method in methods.items():
        seconds, peak = await measure(lambda method=method: method(chat, agent), expected)  # type: ignore[misc]
        results[name] = seconds
        print(f"export {messages:>7,} messages, {name:6}: {seconds:7.3f} s ({messages / seconds:,.0f} entries/s), "
              f"peak memory {peak:6.1f} MiB (the JSON is {expected / 2**20:.1f} MiB)", flush=True)
    if len(results) == 2:
        print(f"export {messages:>7,} messages: paged / stream time x{results['paged'] / results['stream']:.1f}")
    await node.aclose()
    await store.aclose()


async def over_http(data: Path, messages: int) -> None:
    """`GET /api/me/export` end to end, through a real node and HTTP server."""
    import httpx

    from hero.server import open_node
    from hero.users import Users
    from tests.conftest import free_port, serving_app

    port = free_port()
    config = NodeConfig(data_dir=data, port=port, overlay="off", max_tokens=24, n_ctx=1024)
    keys = NodeKeys.load_or_create(data)
    key = UserKey.generate()
    users = Users(data, keys)
    try:
        token, _ = users.issue(users.add("bench", key.agent_id, key=key))
    finally:
        users.close()
    store = await open_store(config, keys)
    entries = seeded(messages)
    await store.put(state_key(key.agent_id), json.dumps({"history": entries}).encode(), epoch=1)
    await store.aclose()
    headers = {"Authorization": f"Bearer {token}"}
    async with open_node(config, agent_factory=Echo) as parts, serving_app(parts.app, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            await (await parts.node.deliver(key.agent_id, Ping())).wait_accepted()  # migrated into segments
            await parts.node.hibernate(key.agent_id)
            await parts.node.settle()

            async def export() -> int:
                size = count = 0
                tail = b""  # a piece may end inside a `"seq":`
                async with http.stream("GET", "/api/me/export", headers=headers) as r:
                    assert r.status_code == 200, r.status_code
                    async for piece in r.aiter_raw():
                        size += len(piece)
                        count += (tail + piece).count(b'"seq":')
                        tail = piece[-5:]
                assert count == messages, (count, messages)
                return size

            seconds, peak, size = await best_and_peak(export)
    print(f"GET /api/me/export {messages:>7,} messages: {seconds:7.3f} s ({messages / seconds:,.0f} entries/s), "
          f"peak memory {peak:6.1f} MiB (the document is {size / 2**20:.1f} MiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,50000", help="history sizes, comma-separated")
    parser.add_argument("--paged-only", action="store_true", help="only the baseline (to run on an older tree)")
    parser.add_argument("--http", action="store_true", help="the whole GET /api/me/export through a real node")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    methods: dict[str, Method] = {"paged": paged}
    if not args.paged_only:
        methods["stream"] = streamed
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            if args.http:
                asyncio.run(over_http(Path(tmp) / f"http{n}", n))
            else:
                asyncio.run(figures(Path(tmp) / str(n), n, methods))


if __name__ == "__main__":
    main()
