"""The user's data is theirs: `GET /api/me/export` (all of it as one JSON document) and `DELETE /api/me`.

The export is streamed: its history is read a page at a time through the chat seam and
never held whole. A first pass pages back from the newest entry and keeps only where each
page begins (one integer a page); the second reads those pages again, oldest first, and
writes each out as it comes. The history is the one it was when the export began: entries
added meanwhile are in the next export, never half in this one.

Deleting asks for `confirm=<your user name>`, so a stray request (or a stolen token used
carelessly) cannot erase a life's history by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hero.errors import BadRequest, InvalidField, Unavailable
from hero.seams.chat import ChatHistories
from hero.web.auth import require_user
from hero.web.parts import parts

EXPORT_PAGE = 500  # history entries read, and written out, at a time
FORMAT = "hero-export/1"


async def history_bounds(chat: ChatHistories, agent_id: str, *, page: int = EXPORT_PAGE) -> list[int]:
    """Where each page of the history ends (its `before`), newest page first: one integer a page is all that is
    kept. The first bound is one past the newest entry, so what is added meanwhile stays out."""
    first = await chat.page(agent_id, limit=page)
    if not first.entries:
        return []
    bounds = [first.entries[-1].seq + 1]
    cursor = first.next_before if first.has_more else None
    while cursor is not None:
        bounds.append(cursor)
        older = await chat.page(agent_id, limit=page, before=cursor)
        cursor = older.next_before if older.has_more else None
    return bounds


async def history_json(chat: ChatHistories, agent_id: str, bounds: list[int], *, page: int = EXPORT_PAGE,
                       counted: list[int] | None = None) -> AsyncIterator[str]:
    """The history as the members of a JSON array, oldest first, one piece a page."""
    first = True
    for before in reversed(bounds):
        entries = (await chat.page(agent_id, limit=page, before=before)).entries
        if not entries:
            continue
        text = ",".join(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) for e in entries)
        yield text if first else "," + text
        first = False
        if counted is not None:
            counted[0] += len(entries)


async def export(request: Request) -> Response:
    claims = await require_user(request)
    edge = parts(request)
    if edge.data is None:
        raise Unavailable("this node cannot export user data")
    chat, agent_id = edge.chat, claims.sub
    bounds = await history_bounds(chat, agent_id)  # before the answer starts: a damaged agent is a clean error
    head = {
        "format": FORMAT,
        "exported": round(time.time(), 3),
        "user": {"name": claims.name, "agent_id": agent_id},
        **(await edge.data.skill_state(agent_id)),
    }

    async def body() -> AsyncIterator[str]:
        yield json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"history":['
        counted = [0]
        async for piece in history_json(chat, agent_id, bounds, counted=counted):
            yield piece
        yield f'],"history_count":{counted[0]}}}'

    filename = f"hero-export-{claims.name}.json"
    return StreamingResponse(
        body(),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


async def delete_me(request: Request) -> Response:
    """Delete the user, their agent and every object of it; `confirm` must be the user's name."""
    claims = await require_user(request)
    confirm = request.query_params.get("confirm")
    if confirm is None:
        raise BadRequest("deleting your agent and all its data needs confirm=<your user name>", field="confirm")
    if confirm != claims.name:
        raise InvalidField("confirm must be your user name exactly (nothing was deleted)", field="confirm")
    edge = parts(request)
    if edge.data is None:
        raise Unavailable("this node cannot delete user data")
    report: dict[str, Any] = await edge.data.delete(claims.sub)
    return JSONResponse(report)


def routes() -> list[Route]:
    return [
        Route("/api/me/export", export, methods=["GET"]),
        Route("/api/me", delete_me, methods=["DELETE"]),
    ]
