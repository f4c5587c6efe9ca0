"""Power history for the dashboard's charts: `GET /api/node/power/chart?window=1h|1d` (operator).

Node watts and the top-10 agents by energy, one point per bucket (1 min for
an hour, 10 min for a day) from the power service's DuckDB history, ready to
plot; `/api/node/power/history` gives the raw rows. The query lives in
`hero.power.charts`.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import InvalidField, Unavailable
from hero.power.charts import WINDOWS, power_history
from hero.web.auth import require_operator


async def history(request: Request) -> Response:
    await require_operator(request)
    window = request.query_params.get("window", "1h")
    if window not in WINDOWS:
        raise InvalidField(f"window must be one of {sorted(WINDOWS)}", field="window")
    power = request.app.state.power
    if power is None:
        raise Unavailable("power metering is not running on this node")
    if power.history is None:
        raise Unavailable("power history is off on this node")
    return JSONResponse(await asyncio.to_thread(power_history, power.history, window))


def routes() -> list[Route]:
    return [Route("/api/node/power/chart", history, methods=["GET"])]
