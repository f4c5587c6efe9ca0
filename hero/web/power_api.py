"""Power endpoints: Prometheus `/metrics`, the operator's node view (JSON and SSE), a user's own agent.

Authorisation: `/metrics` and `/api/node/power*` need the operator token —
per-agent watts reveal who is active when, so they are not public (point
Prometheus at it with `authorization: {credentials: <operator token>}` in
the scrape config). `/api/me/power` answers for the caller's own agent only:
the agent id comes from the token, never from the request. The stored history
is `hero.web.power_history_api`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import Unavailable
from hero.seams.power import PowerReports
from hero.web.auth import require_operator, require_user
from hero.web.bodies import query_int
from hero.web.node_api import name_agents
from hero.web.parts import parts


def power_of(request: Request) -> PowerReports:
    power = parts(request).power
    if power is None:
        raise Unavailable("power metering is not running on this node")
    return power


async def metrics(request: Request) -> Response:
    await require_operator(request)
    registry = parts(request).metrics  # built over the power part when the node has one
    if registry is None:
        raise Unavailable("power metering is not running on this node")
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _named(request: Request, report: dict[str, Any]) -> dict[str, Any]:
    name_agents(request, report["agents"])
    return report


async def node_power(request: Request) -> Response:
    await require_operator(request)
    return JSONResponse(_named(request, power_of(request).node_report()))


async def node_power_stream(request: Request) -> Response:
    """1 Hz SSE of the node report: one event now, then one per tick. `?count=N` ends after N events."""
    await require_operator(request)
    power = power_of(request)
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


async def my_power(request: Request) -> Response:
    claims = await require_user(request)
    return JSONResponse(power_of(request).agent_report(claims.sub))


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/node/power", node_power, methods=["GET"]),
        Route("/api/node/power/stream", node_power_stream, methods=["GET"]),
        Route("/api/me/power", my_power, methods=["GET"]),
    ]
