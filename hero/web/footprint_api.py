"""The user's own footprint next to the node's average: `GET /api/me/footprint`.

`/api/me/power` tells a user what their agent draws; this adds what the
average agent on the node draws, so the chat app can say "2× the average"
without giving a user anyone else's figures (only the mean leaves the node).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import Unavailable
from hero.web.auth import require_user


def node_average(report: dict[str, Any]) -> dict[str, Any]:
    """Mean watts and Wh today over the agents the node hosts (awake or asleep: both are its users)."""
    agents = [a for a in report.get("agents", []) if a.get("state") in ("active", "hibernated")]
    count = len(agents)
    return {
        "agents": count,
        "watts": sum(a["watts"] for a in agents) / count if count else 0.0,
        "wh_today": sum(a["wh_today"] for a in agents) / count if count else 0.0,
    }


async def my_footprint(request: Request) -> Response:
    claims = await require_user(request)
    power = request.app.state.power
    if power is None:
        raise Unavailable("power metering is not running on this node")
    mine = power.agent_report(claims.sub)
    return JSONResponse(
        {
            "agent_id": claims.sub,
            "watts": mine["watts"],
            "wh_today": mine["wh_today"],
            "joules": mine["joules"],
            "source": mine.get("source"),
            "node_average": node_average(power.node_report()),
        }
    )


def routes() -> list[Route]:
    return [Route("/api/me/footprint", my_footprint, methods=["GET"])]
