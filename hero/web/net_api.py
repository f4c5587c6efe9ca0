"""`GET /api/node/net`: the overlay's peers, routes and per-link traffic for the operator (operator only)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hero.errors import NotFound
from hero.web.auth import require_operator
from hero.web.parts import parts


async def net_status(request: Request) -> JSONResponse:
    await require_operator(request)
    overlay = parts(request).overlay
    if overlay is None:
        raise NotFound("this node runs no overlay (started with --no-overlay, or its port or daemon failed)")
    return JSONResponse(await overlay.status())


def routes() -> list[Route]:
    return [Route("/api/node/net", net_status, methods=["GET"])]
