"""The node's stored power for the operator: raw rows (`GET /api/node/power/history`) and chart-ready buckets
(`GET /api/node/power/chart?window=1h|1d`, the dashboard's charts).

Both read the power part's DuckDB history through its seam: the rows of the last
`minutes` with the top agents by energy, or node watts and the top-10 agents one
point per bucket (1 min for an hour, 10 min for a day).
"""

from __future__ import annotations

import time
from typing import cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import InvalidField
from hero.seams.power import CHART_WINDOWS, ChartWindow
from hero.web.auth import require_operator
from hero.web.bodies import query_int
from hero.web.power_api import power_of

TOP_AGENTS = 20  # in the raw history


async def node_power_history(request: Request) -> Response:
    """Node watts and the top agents by energy over the last `minutes` (default 60)."""
    await require_operator(request)
    power = power_of(request)
    minutes = query_int(request, "minutes", 60, low=1, high=90 * 24 * 60)
    return JSONResponse(await power.history_rows(time.time() - minutes * 60, top=TOP_AGENTS))


async def node_power_chart(request: Request) -> Response:
    await require_operator(request)
    window = request.query_params.get("window", "1h")
    if window not in CHART_WINDOWS:
        raise InvalidField(f"window must be one of {sorted(CHART_WINDOWS)}", field="window")
    return JSONResponse(await power_of(request).chart(cast(ChartWindow, window)))


def routes() -> list[Route]:
    return [
        Route("/api/node/power/history", node_power_history, methods=["GET"]),
        Route("/api/node/power/chart", node_power_chart, methods=["GET"]),
    ]
