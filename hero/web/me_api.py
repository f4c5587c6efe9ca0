"""The user's data is theirs: `GET /api/me/export` (all of it as one JSON document) and `DELETE /api/me`.

The export is streamed: its history is read oldest first through the chat seam's `stream`,
one sealed segment at a time, each segment read once, and written out `EXPORT_PAGE` entries
a piece, so it is never held whole. The history is the one it was when the export began (the
stream reads the head once, before the answer starts): entries added meanwhile are in the
next export, never half in this one.

Deleting asks for `confirm=<your user name>`, so a stray request (or a stolen token used
carelessly) cannot erase a life's history by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hero.errors import BadRequest, InvalidField, Unavailable
from hero.seams.chat import Entry
from hero.web.auth import require_user
from hero.web.parts import parts

EXPORT_PAGE = 500  # history entries written out at a time
FORMAT = "hero-export/1"


async def history_json(entries: AsyncIterator[Entry], *, page: int = EXPORT_PAGE,
                       counted: list[int] | None = None) -> AsyncIterator[str]:
    """`entries` as the members of a JSON array, `page` entries a piece."""
    batch: list[str] = []
    first = True
    async for entry in entries:
        batch.append(json.dumps(entry.to_json(), ensure_ascii=False, separators=(",", ":")))
        if len(batch) == page:
            yield ("" if first else ",") + ",".join(batch)
            first = False
            if counted is not None:
                counted[0] += len(batch)
            batch = []
    if batch:
        yield ("" if first else ",") + ",".join(batch)
        if counted is not None:
            counted[0] += len(batch)


async def export(request: Request) -> Response:
    claims = await require_user(request)
    edge = parts(request)
    if edge.data is None:
        raise Unavailable("this node cannot export user data")
    chat, agent_id = edge.chat, claims.sub
    entries = chat.stream(agent_id)
    try:  # the head is read before the answer starts: a damaged agent is a clean error
        oldest = await anext(entries, None)
        head = {
            "format": FORMAT,
            "exported": round(time.time(), 3),
            "user": {"name": claims.name, "agent_id": agent_id},
            **(await edge.data.skill_state(agent_id)),
        }
    except BaseException:
        await entries.aclose()
        raise

    async def history() -> AsyncIterator[Entry]:
        if oldest is not None:
            yield oldest
            async for entry in entries:
                yield entry

    async def body() -> AsyncIterator[str]:
        async with aclosing(entries):
            yield json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"history":['
            counted = [0]
            async for piece in history_json(history(), counted=counted):
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
    return JSONResponse(report, status_code=202 if report["store"]["pending"] else 200)  # 202: a backend is behind


def routes() -> list[Route]:
    return [
        Route("/api/me/export", export, methods=["GET"]),
        Route("/api/me", delete_me, methods=["DELETE"]),
    ]
