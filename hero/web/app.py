"""The Starlette app: routes from each API module, one error mapping, static pages.

Every HeroError becomes JSON with its status (plus Retry-After when the node
is overloaded); anything else becomes a plain 500 JSON — the traceback goes to
the log once, never to the client, and the keep-alive connection stays usable.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hero.config import NodeConfig
from hero.errors import HeroError, Overloaded
from hero.seams.chat import ChatHistories
from hero.seams.llm import LLMStatus
from hero.seams.node import AgentRuntime
from hero.seams.power import PowerReports
from hero.seams.store import StateStore
from hero.seams.users import UserData, UserRegistry
from hero.web import (
    chat_api,
    cluster_api,
    events_api,
    login_api,
    mcp_api,
    me_api,
    net_api,
    node_api,
    openapi,
    power_api,
    power_history_api,
    status_api,
    storage_api,
)
from hero.web.metrics import make_registry
from hero.web.parts import Parts

log = logging.getLogger("hero.web")
STATIC = Path(__file__).parent / "static"


def create_app(
    *,
    config: NodeConfig,
    node: AgentRuntime,
    chat: ChatHistories,
    users: UserRegistry,
    llm: LLMStatus,
    store: StateStore,
    power: PowerReports | None = None,
    data: UserData | None = None,
) -> Starlette:
    """The node's web app over its parts; the overlay, which starts later, is set on `parts(app).overlay`."""
    routes = [
        *chat_api.routes(),
        *node_api.routes(),
        *me_api.routes(),
        *login_api.routes(),
        *events_api.routes(),
        *status_api.routes(),
        *power_api.routes(),
        *power_history_api.routes(),
        *storage_api.routes(),
        *net_api.routes(),
        *cluster_api.routes(),
        *mcp_api.routes(),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/manifest.webmanifest", manifest, methods=["GET"]),
        Route("/sw.js", service_worker, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ContainServerErrors)],
        exception_handlers={HeroError: hero_error, HTTPException: http_error, Exception: server_error},
    )
    metrics = make_registry(power, llm) if power is not None else None
    app.state.parts = Parts(config, node, chat, users, llm, store, power, metrics, time.time(), data=data)
    app.state.event_streams = events_api.StreamSlots(events_api.MAX_STREAMS_PER_USER)
    app.state.mcp = mcp_api.McpEndpoint(node)  # its sessions run from the first /mcp request; closed by the server
    return app


# The pages load only their own files: no inline script, no CDN (nodes may be offline).
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",  # sign-in links carry a token in the query string
    "X-Content-Type-Options": "nosniff",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", headers=PAGE_HEADERS)


async def manifest(request: Request) -> Response:
    return FileResponse(
        STATIC / "manifest.webmanifest", media_type="application/manifest+json", headers={"Cache-Control": "no-cache"}
    )


async def service_worker(request: Request) -> Response:
    """Served from the root so its scope covers `/` and `/dashboard`; never cached, so updates land."""
    return FileResponse(
        STATIC / "sw.js",
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"},
    )


async def hero_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HeroError)
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, Overloaded) else None
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": {"message": exc.detail, "type": "http_error"}}, status_code=exc.status_code)


class ContainServerErrors:
    """An unexpected exception costs its one request: a logged 500 JSON answer, and the connection lives on.

    Starlette's own last-resort handler answers and then re-raises, so the server
    closes the keep-alive connection and logs the traceback a second time. Here the
    exception ends where it is answered; one that comes after the answer has started
    (a broken stream) still propagates, since that connection cannot be saved.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            response = await server_error(Request(scope, receive), exc)
            await response(scope, receive, send)


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": {"message": "internal server error", "type": "internal_error"}}, status_code=500)
