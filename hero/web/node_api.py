"""The user's own resources (`/api/me/...`) and the operator's view of the node (`/api/node/...`)."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import InvalidField
from hero.seams.node import AgentInfo
from hero.web.auth import require_operator, require_user
from hero.web.bodies import query_int
from hero.web.parts import parts

MAX_PAGE = 500
MAX_QUERY_CHARS = 200  # a search's `q`: a few words, not a document
SEARCH_LIMIT = 20  # matches a search returns when `limit` is not given


async def me(request: Request) -> Response:
    claims = await require_user(request)
    status = parts(request).node.agent_status(claims.sub) or "hibernated"
    return JSONResponse(
        {"name": claims.name, "agent_id": claims.sub, "agent_status": status, "token_expires": claims.exp}
    )


async def my_messages(request: Request) -> Response:
    """This user's history, newest last; page backwards with `before=<seq>`; or, with `q=<words>`, the newest
    `limit` entries holding every word, newest first (read one segment at a time, stopping once found)."""
    claims = await require_user(request)
    if "q" in request.query_params:
        return await _search(request, claims.sub)
    limit = query_int(request, "limit", 50, low=1, high=MAX_PAGE)
    before = query_int(request, "before", None, low=1, high=2**62)
    page = await parts(request).chat.page(claims.sub, limit=limit, before=before)
    return JSONResponse(
        {"messages": [e.to_json() for e in page.entries], "has_more": page.has_more, "next_before": page.next_before}
    )


async def _search(request: Request, agent_id: str) -> Response:
    """`has_more`: older entries match too (one match beyond `limit` is looked for); a search does not page."""
    query = request.query_params["q"]
    if not re.search(r"\w", query) or len(query) > MAX_QUERY_CHARS:
        raise InvalidField(f"query parameter q must hold a word and at most {MAX_QUERY_CHARS} characters", field="q")
    limit = query_int(request, "limit", SEARCH_LIMIT, low=1, high=MAX_PAGE)
    if "before" in request.query_params:
        raise InvalidField("query parameter before cannot be given with q (a search does not page)", field="before")
    found = await parts(request).chat.search(agent_id, query, limit=limit + 1)
    return JSONResponse(
        {"messages": [e.to_json() for e in found[:limit]], "has_more": len(found) > limit, "next_before": None}
    )


def user_names(request: Request) -> dict[str, str]:
    """Agent id → user name from the user registry: the operator knows users by name, not by key."""
    return {user.agent_id: user.name for user in parts(request).users.list()}


def name_agents(request: Request, agents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add `user` (the name, or None for an agent no user owns) to each operator-facing agent entry."""
    names = user_names(request)
    for agent in agents:
        agent["user"] = names.get(agent["agent_id"])
    return agents


async def node_agents(request: Request) -> Response:
    await require_operator(request)
    agents = await parts(request).node.agents()
    return JSONResponse(
        {
            "agents": name_agents(request, [_agent_json(a) for a in agents]),
            "active": sum(a.status == "active" for a in agents),
            "hibernated": sum(a.status == "hibernated" for a in agents),
            "damaged": sum(a.status == "damaged" for a in agents),
        }
    )


def _agent_json(info: AgentInfo) -> dict[str, Any]:
    """One agent for the operator; a damaged one says why (the store's error) and since when."""
    out = {"agent_id": info.agent_id, "status": info.status, "last_event": info.last_event}
    if info.reason is not None:
        out.update(reason=info.reason, damaged_since=info.since)
    return out


async def healthz(request: Request) -> Response:
    edge = parts(request)
    return JSONResponse(
        {"status": "ok", "uptime": round(time.time() - edge.started, 1), "model_loaded": edge.llm.loaded}
    )


def routes() -> list[Route]:
    return [
        Route("/api/me", me, methods=["GET"]),
        Route("/api/me/messages", my_messages, methods=["GET"]),
        Route("/api/node/agents", node_agents, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
