"""MCP both ways on a real node: the real `mcp` client lists and calls a user's own tools over /mcp (and another
user's token reaches only that user's agent); a skill uses an external MCP server's tools only where its
outbound permission allows the host, and a down or garbage server is a one-line error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.conftest import add_user, auth, free_port, make_config, serving, serving_app
from tests.skillkit import write_skill


def client(url: str, token: str) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=auth(token))),
                  raise_exceptions=True)


async def chat(base: str, token: str, text: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post("/v1/chat/completions", headers=auth(token),
                            json={"messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


async def test_the_mcp_client_lists_and_calls_its_users_tools_and_no_one_elses(node) -> None:  # type: ignore[no-untyped-def]
    url = f"{node.base_url}/mcp"
    await chat(node.base_url, node.alice["token"], "/note the gate code is 4711")
    energy = await chat(node.base_url, node.alice["token"], "how much energy do you use?")
    assert energy.startswith("I draw ") and " Wh today" in energy  # the energy skill, from the power part
    async with client(url, node.alice["token"]) as alice:
        names = {t.name for t in (await alice.list_tools()).tools}
        assert {"notes.search", "reminders.remind", "calc.evaluate", "ask.ask_agent", "energy.energy"} <= names
        found = await alice.call_tool("notes.search", {"query": "gate code"})
        assert not found.is_error and "4711" in found.content[0].text
        bad = await alice.call_tool("notes.search", {"query": 5})
        assert bad.is_error and "argument 'query'" in bad.content[0].text
    async with client(url, node.bob["token"]) as bob:
        found = await bob.call_tool("notes.search", {"query": "gate code"})
        assert "4711" not in found.content[0].text  # bob's token reaches bob's agent, never alice's
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert (await http.post("/mcp", json=body)).status_code == 401
        r = await http.post("/mcp", json=body, headers=auth(node.operator))
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
        r = await http.post("/mcp", content=b"{nope", headers=auth(node.alice["token"]))
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@asynccontextmanager
async def external_mcp_server(port: int) -> AsyncIterator[None]:
    """A third party's MCP server on 127.0.0.1 with one tool, `add`."""
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                  "required": ["a", "b"]}
        return types.ListToolsResult(tools=[types.Tool(name="add", description="Add two numbers",
                                                       input_schema=schema)])

    async def call_tool(ctx: Any, params: Any) -> types.CallToolResult:
        total = params.arguments["a"] + params.arguments["b"]
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(total))])

    manager = StreamableHTTPSessionManager(Server("adder", on_list_tools=list_tools, on_call_tool=call_tool),
                                           stateless=True, json_response=True)
    app = Starlette(routes=[Mount("/mcp", app=manager.handle_request)])
    async with manager.run(), serving_app(app, port):
        yield


async def test_a_skill_uses_an_external_mcp_server_only_where_its_permission_allows(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    allowed = write_skill(tmp_path / "dev", "remote", "", f'hosts = ["127.0.0.1:{port}", "127.0.0.1:{closed}"]\n')
    write_skill(tmp_path / "dev", "local", "")
    config = make_config(tmp_path, dev_skills=str(tmp_path / "dev"))
    assert allowed.is_dir()
    async with serving(config) as parts, external_mcp_server(port):
        base = f"http://127.0.0.1:{config.port}"
        token = add_user(config.data_dir, "carol")["token"]
        assert parts.node is not None
        added = await chat(base, token, f"/mcp add remote http://127.0.0.1:{port}/mcp/")
        assert added.startswith("Added") and "remote.add" in added
        assert await chat(base, token, '/call remote.add {"a": 2, "b": 40}') == "42"
        assert "argument 'b'" in await chat(base, token, '/call remote.add {"a": 2, "b": "x"}')
        refused = await chat(base, token, f"/mcp add local http://127.0.0.1:{port}/mcp/")
        assert "skill local may not reach 127.0.0.1" in refused
        down = await chat(base, token, f"/mcp add remote http://127.0.0.1:{closed}/mcp/")
        assert down.startswith("⚠") and f"MCP server http://127.0.0.1:{closed}/mcp/ cannot be reached" in down
        garbage = await chat(base, token, f"/mcp add remote http://127.0.0.1:{closed}/mcp/".replace(
            str(closed), str(port)).replace("/mcp/", "/nothing"))
        assert garbage.startswith("⚠") and "did not answer as an MCP server" in garbage
        assert "remote.add" in await chat(base, token, "/help")  # the agent is fine
