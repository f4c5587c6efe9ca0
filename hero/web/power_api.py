"""Power endpoints: Prometheus `/metrics`, the operator's node view (JSON and SSE), a user's own agent.

Authorisation: `/metrics` and `/api/node/power*` need the operator token —
per-agent watts reveal who is active when, so they are not public (point
Prometheus at it with `authorization: {credentials: <operator token>}` in
the scrape config). `/api/me/power` answers for the caller's own agent only:
the agent id comes from the token, never from the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import Unavailable
from hero.web.auth import require_operator, require_user
from hero.web.bodies import query_int
from hero.web.node_api import name_agents


def _power(request: Request) -> Any:
    power = getattr(request.app.state, "power", None)
    if power is None:
        raise Unavailable("power metering is not running on this node")
    return power


async def metrics(request: Request) -> Response:
    await require_operator(request)
    power = _power(request)
    return Response(generate_latest(power.registry), media_type=CONTENT_TYPE_LATEST)


def _named(request: Request, report: dict[str, Any]) -> dict[str, Any]:
    name_agents(request, report["agents"])
    return report


async def node_power(request: Request) -> Response:
    await require_operator(request)
    return JSONResponse(_named(request, _power(request).node_report()))


async def node_power_stream(request: Request) -> Response:
    """1 Hz SSE of the node report: one event now, then one per tick. `?count=N` ends after N events."""
    await require_operator(request)
    power = _power(request)
    count = query_int(request, "count", None, low=1, high=1_000_000)

    async def events() -> AsyncIterator[dict[str, str]]:
        sent = 0
        yield {"event": "power", "data": json.dumps(_named(request, power.node_report()))}
        sent += 1
        if count is not None and sent >= count:
            return
        async for report in power.stream():
            yield {"event": "power", "data": json.dumps(_named(request, report))}
            sent += 1
            if count is not None and sent >= count:
                return

    return EventSourceResponse(events(), ping=15)


async def node_power_history(request: Request) -> Response:
    """Node watts and the top agents by energy over the last `minutes` (default 60), from DuckDB."""
    await require_operator(request)
    power = _power(request)
    minutes = query_int(request, "minutes", 60, low=1, high=90 * 24 * 60)
    history = power.history
    if history is None:
        raise Unavailable("power history is off on this node")
    since = time.time() - minutes * 60
    series = await asyncio.to_thread(history.node_series, since)
    top = await asyncio.to_thread(history.top_agents, since, 20)
    return JSONResponse({"since": since, "node": series, "top_agents": top})


async def my_power(request: Request) -> Response:
    claims = await require_user(request)
    return JSONResponse(_power(request).agent_report(claims.sub))


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/node/power", node_power, methods=["GET"]),
        Route("/api/node/power/stream", node_power_stream, methods=["GET"]),
        Route("/api/node/power/history", node_power_history, methods=["GET"]),
        Route("/api/me/power", my_power, methods=["GET"]),
    ]
