"""The operator's view of the node that is neither power nor storage: `GET /api/node/status` (+ `/stream`, 1 Hz).

Agents active vs hibernated, how often agents are activated, the shared LLM's queue and
throughput, and which optional parts (power, storage, overlay) this node has,
so the dashboard shows only the panels whose data exists. Rates are deltas of the
runtime's and LLM's counters over a short window of samples kept per app.

Damaged agents are listed by name with the reason (the store's error), from the
runtime's memory (`damaged_agents`), so a status costs no store read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import HeroError
from hero.seams.store import StoreStatus
from hero.web.auth import require_operator
from hero.web.node_api import user_names
from hero.web.parts import parts

ACTIVATION_WINDOW_S = 60.0  # activation rate: activations per minute over the last minute
TOKENS_WINDOW_S = 5.0  # tokens/s over the last few seconds: responsive, not jumpy
STREAM_PERIOD_S = 1.0


class Rates:
    """Counter samples (at most one per second) and the rates between them."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, activations: int, tokens: int) -> None:
        if self.samples and now - self.samples[-1][0] < 0.5:
            return
        self.samples.append((now, activations, tokens))
        while self.samples and now - self.samples[0][0] > ACTIVATION_WINDOW_S + 1:
            self.samples.popleft()

    def per_second(self, index: int, window: float, *, full_window: bool = False) -> float:
        """Rate of counter `index` over the last `window` seconds; `full_window` divides by the whole
        window even when fewer seconds have been seen, so one activation just after start is 1/min, not 3/min."""
        if len(self.samples) < 2:
            return 0.0
        last = self.samples[-1]
        first = next((s for s in self.samples if last[0] - s[0] <= window), self.samples[0])
        if first is last:
            first = self.samples[-2]
        span = max(last[0] - first[0], window) if full_window else last[0] - first[0]
        return max(0.0, (last[index] - first[index]) / span) if span > 0 else 0.0


def _rates(request: Request) -> Rates:
    rates = getattr(request.app.state, "status_rates", None)
    if rates is None:
        rates = request.app.state.status_rates = Rates()
    return rates


async def node_status(request: Request) -> dict[str, Any]:
    """One snapshot of the node's runtime and LLM counters, with rates."""
    edge = parts(request)
    node, llm = edge.node, edge.llm
    by_agent = node.agent_statuses()
    statuses = list(by_agent.values())
    damaged = node.damaged_agents()
    names = user_names(request) if damaged else {}  # the list's own agents (one in memory counts as active)
    tokens = llm.tokens_total
    now = time.monotonic()
    rates = _rates(request)
    rates.add(now, node.stats.activations, tokens)
    active = statuses.count("active")
    return {
        "ts": time.time(),
        "uptime": round(time.time() - edge.started, 1),
        "node_id": node.node_id,
        "agents": {
            "active": active,
            "hibernated": statuses.count("hibernated"),
            "damaged": statuses.count("damaged"),
            "total": len(statuses),
        },
        "damaged_agents": [
            {"agent_id": a.agent_id, "user": names.get(a.agent_id), "reason": a.reason, "since": a.since}
            for a in damaged
        ],
        "activation_rate_per_min": round(rates.per_second(1, ACTIVATION_WINDOW_S, full_window=True) * 60.0, 2),
        "runtime": {
            "activations": node.stats.activations,
            "hibernations": node.stats.hibernations,
            "turns": node.stats.turns,
            "turn_errors": node.stats.turn_errors,
            "timers_fired": node.stats.timers_fired,
            "timers_pending": len(node.timers),
        },
        "llm": {
            "model": llm.name,
            "loaded": llm.loaded,
            "queue_depth": llm.queue_depth,
            "tokens_total": tokens,
            "tokens_per_s": round(rates.per_second(2, TOKENS_WINDOW_S), 2),
            "requests_total": llm.requests_total,
            "threads": llm.threads,
            **llm.figures(),  # batch, KV cache, prompt reuse, parallel sequences (hero/scheduler/llm.py)
        },
        "parts": {
            "power": edge.power is not None,
            "storage": isinstance(edge.store, StoreStatus),
            "network": edge.overlay is not None,
        },
    }


async def status(request: Request) -> Response:
    await require_operator(request)
    return JSONResponse(await node_status(request))


async def status_stream(request: Request) -> Response:
    await require_operator(request)
    return EventSourceResponse(_stream(request), ping=15, send_timeout=30, headers={"Cache-Control": "no-cache"})


async def _stream(request: Request) -> AsyncIterator[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        try:
            await require_operator(request)  # a revoked or expired operator token ends the stream
        except HeroError as exc:
            yield {"event": "auth", "data": json.dumps(exc.to_json())}
            return
        yield {"event": "status", "data": json.dumps(await node_status(request), separators=(",", ":"))}
        due += STREAM_PERIOD_S
        await asyncio.sleep(max(0.0, due - loop.time()))


def routes() -> list[Route]:
    return [
        Route("/api/node/status", status, methods=["GET"]),
        Route("/api/node/status/stream", status_stream, methods=["GET"]),
    ]
