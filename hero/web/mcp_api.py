"""`POST /mcp`: MCP over streamable HTTP (the `mcp` package's server, stateless, JSON answers), so any MCP client
(a desktop assistant, an IDE) reaches its user's own agent.

Every request is authenticated with the user's bearer token before MCP sees it;
the token's agent is the only one the request reaches. `tools/list` lists that
agent's skills' tools, `tools/call` calls one: both are delivered to the agent as
an `ApiRequest` event, so the tool runs as that agent, in its turn, under its
skills' permissions, charged to its ledger. The web layer holds no agent logic:
it asks the agent and relays its answer.

Errors keep Hero's shape: a refused token is the usual 401 JSON; an MCP-level
HTTP error (a body that is not JSON-RPC) keeps its JSON-RPC body with a `type`
added, so it is also `{"error": {"message", "type"}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from hero.errors import HeroError, Unavailable
from hero.nursery import Nursery
from hero.runtime.events import ApiRequest
from hero.web.auth import require_user

log = logging.getLogger("hero.web")
AGENT = "hero.agent_id"  # where the authenticated agent id rides in the ASGI scope
CALL_TIMEOUT_S = 120.0
ACCEPT = b"application/json, text/event-stream"


class McpEndpoint:
    """The node's MCP server; its session manager runs in a task of its own from the first request on."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._nursery = Nursery("mcp")
        self._manager: Any = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()

    async def start(self) -> Any:
        """The session manager, started on the first request (the `mcp` server costs a second to import)."""
        from mcp.server.lowlevel import Server
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        if self._manager is not None:
            await self._ready.wait()
            return self._manager
        server: Any = Server("hero", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        self._manager = StreamableHTTPSessionManager(server, stateless=True, json_response=True)

        async def run() -> None:
            async with self._manager.run():
                self._ready.set()
                await self._stop.wait()

        self._nursery.spawn(run(), name="mcp-sessions")
        await self._ready.wait()
        return self._manager

    async def aclose(self) -> None:
        if self._manager is not None:
            self._stop.set()
        await self._nursery.aclose()

    async def _ask(self, ctx: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request = getattr(ctx, "request", None)
        agent_id = request.scope.get(AGENT) if request is not None else None
        if not agent_id:
            raise Unavailable("the MCP request carries no authenticated agent")
        reply = await self.node.deliver(agent_id, ApiRequest(method, params))
        answer: dict[str, Any] = json.loads(await reply.text())
        return answer

    async def _list_tools(self, ctx: Any, params: Any) -> Any:
        import mcp_types as types

        answer = await self._ask(ctx, "tools/list", {})
        return types.ListToolsResult(tools=[
            types.Tool(name=t["name"], description=t.get("description") or None, input_schema=t["parameters"])
            for t in answer.get("tools", [])
        ])

    async def _call_tool(self, ctx: Any, params: Any) -> Any:
        import mcp_types as types

        try:
            answer = await self._ask(ctx, "tools/call", {"name": params.name, "arguments": params.arguments or {}})
        except HeroError as exc:
            answer = {"error": {"message": exc.message, "type": exc.code}}
        if "error" in answer:
            message = f"{answer['error'].get('type', 'error')}: {answer['error'].get('message', '')}"
            return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)
        result = answer.get("result")
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        structured = result if isinstance(result, dict) else {"result": result}
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    structured_content=structured)


async def mcp(request: Request) -> Response:
    claims = await require_user(request)
    endpoint: McpEndpoint = request.app.state.mcp
    manager = await endpoint.start()
    scope = dict(request.scope)
    scope[AGENT] = claims.sub
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"accept", b"content-type")]
    scope["headers"] = [*headers, (b"accept", ACCEPT), (b"content-type", b"application/json")]
    status = 0
    start: Message | None = None
    body = bytearray()

    async def capture(message: Message) -> None:
        nonlocal status, start
        if message["type"] == "http.response.start":
            start, status = message, message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await manager.handle_request(scope, request.receive, capture)
    return _answer(status or 500, bytes(body), start)


def _answer(status: int, body: bytes, start: Message | None) -> Response:
    """The MCP library's answer; an error's JSON-RPC body gets Hero's `type` (and a message) beside its own."""
    headers = {k.decode(): v.decode() for k, v in (start or {}).get("headers", []) if k.lower() not in
               (b"content-length", b"content-type")}
    if status < 400:
        return Response(body, status_code=status, headers=headers,
                        media_type="application/json" if body else None)
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        data, error = {}, {}
        data["error"] = error
    error.setdefault("message", body.decode("utf-8", errors="replace")[:300] or "the MCP request was refused")
    error["type"] = "invalid_request_error" if status < 500 else "internal_error"
    return Response(json.dumps(data), status_code=status, headers=headers, media_type="application/json")


def routes() -> list[Route]:
    return [Route("/mcp", mcp, methods=["POST"])]
