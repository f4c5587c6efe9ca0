"""MCP in: a skill uses the tools of an external MCP server that the user added, if its manifest lets it reach that
server's host. The server's tools then appear as tools of that skill (`SKILL.TOOL`).

`/mcp add SKILL URL [TOKEN]` checks the skill's outbound permission, connects (MCP
over streamable HTTP, the `mcp` package's client), lists the server's tools and
keeps them in the agent's state; `/mcp list`, `/mcp remove SKILL URL`. A server
that is down, refuses or answers what is not MCP costs only that command or call:
the user gets a one-line error naming the server and the cause.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from hero.errors import HeroError, NotFound, SkillFailed
from hero.runtime.agent import AgentContext
from hero.skills.context import SkillContext, SkillServices
from hero.skills.manifest import NAME
from hero.skills.skill import Skill
from hero.skills.tools import Tool

log = logging.getLogger("hero.skills")
SLOT = "mcp"  # the agent state's key: {skill: [{"url", "token", "tools": [...]}]}
MAX_TOOLS = 64
USAGE = "usage: /mcp add SKILL URL [TOKEN] | /mcp list | /mcp remove SKILL URL"


class RemoteTools:
    def __init__(self, ctx: AgentContext, services: SkillServices) -> None:
        self.ctx = ctx
        self.services = services

    def _servers(self) -> dict[str, list[dict[str, Any]]]:
        servers = self.ctx.state.setdefault(SLOT, {})
        return servers if isinstance(servers, dict) else {}

    def tools(self, skills: Iterable[str]) -> list[Tool]:
        out: list[Tool] = []
        servers = self._servers()
        for skill in skills:
            for server in servers.get(skill, []):
                for item in server.get("tools", []):
                    out.append(Tool(skill, item["name"], item.get("description", ""), item["schema"],
                                    _remote_marker, None))
        return out

    def owns(self, tool: Tool) -> bool:
        return tool.fn is _remote_marker

    def _server_of(self, tool: Tool) -> dict[str, Any]:
        for server in self._servers().get(tool.skill, []):
            if any(item["name"] == tool.name for item in server.get("tools", [])):
                return server
        raise NotFound(f"no MCP server of skill {tool.skill} has a tool {tool.name!r}", field="tool")

    def caller(self, tool: Tool) -> Callable[[SkillContext, dict[str, Any]], Awaitable[Any]]:
        server = self._server_of(tool)

        async def call(ctx: SkillContext, args: dict[str, Any]) -> Any:
            ctx.check_url(server["url"])  # the permission may have changed since the server was added
            return await call_remote(server["url"], server.get("token"), tool.name, args,
                                     timeout_s=ctx.permissions.time_limit_s)
        return call

    async def command(self, rest: str, skills: dict[str, Skill]) -> str:
        words = rest.split()
        if not words or words[0] == "list":
            lines = [f"{skill}: {server['url']} ({len(server.get('tools', []))} tools)"
                     for skill, servers in self._servers().items() for server in servers]
            return "\n".join(lines) or "No MCP servers. " + USAGE
        action, args = words[0], words[1:]
        if action == "add" and len(args) in (2, 3):
            return await self.add(skills, args[0], args[1], args[2] if len(args) == 3 else None)
        if action == "remove" and len(args) == 2:
            kept = [s for s in self._servers().get(args[0], []) if s["url"] != args[1]]
            removed = len(self._servers().get(args[0], [])) - len(kept)
            self._servers()[args[0]] = kept
            return f"Removed {args[1]} from {args[0]}." if removed else f"{args[0]} does not use {args[1]}."
        return USAGE

    async def add(self, skills: dict[str, Skill], skill_name: str, url: str, token: str | None) -> str:
        skill = skills.get(skill_name)
        if skill is None or not NAME.match(skill_name):
            raise NotFound(f"no skill {skill_name!r} is enabled (see /help)", field="skill")
        sctx = SkillContext(skill.manifest, self.ctx, self.services)
        sctx.check_url(url)  # PermissionDenied unless the manifest grants the host
        listed = await list_remote(url, token, timeout_s=skill.manifest.permissions.time_limit_s)
        local = set(skill.tools)
        tools = [t for t in listed if t["name"] not in local][:MAX_TOOLS]
        servers = self._servers().setdefault(skill_name, [])
        servers[:] = [s for s in servers if s["url"] != url]
        servers.append({"url": url, "token": token, "tools": tools})
        names = ", ".join(f"{skill_name}.{t['name']}" for t in tools) or "none"
        return f"Added {url} to {skill_name}: its tools are {names}."


async def _remote_marker(ctx: SkillContext, args: dict[str, Any]) -> Any:
    raise SkillFailed("a remote tool is called through its server")  # never called: `owns` routes around it


async def list_remote(url: str, token: str | None, *, timeout_s: float) -> list[dict[str, Any]]:
    """The tools an MCP server at `url` offers, as {name, description, schema}."""
    result = await _session(url, token, timeout_s, lambda client: client.list_tools())
    tools = []
    for tool in getattr(result, "tools", None) or []:
        name = str(getattr(tool, "name", ""))
        schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {}
        if not name or not NAME.match(name.lower().replace("-", "_")) or not isinstance(schema, dict):
            continue
        tools.append({"name": name, "description": str(getattr(tool, "description", "") or ""),
                      "schema": json.loads(json.dumps(schema))})
    return tools


async def call_remote(url: str, token: str | None, name: str, args: dict[str, Any], *, timeout_s: float) -> Any:
    """Call tool `name` on the MCP server at `url`; its structured result, else its text."""
    result = await _session(url, token, timeout_s, lambda client: client.call_tool(name, args))
    structured = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
    texts = [getattr(c, "text", "") for c in getattr(result, "content", None) or [] if getattr(c, "text", None)]
    if getattr(result, "is_error", False) or getattr(result, "isError", False):
        raise SkillFailed(f"MCP server {url}: tool {name} failed: {' '.join(texts)[:300] or 'no message'}")
    return structured if structured is not None else "\n".join(texts)


async def _session(url: str, token: str | None, timeout_s: float, act: Callable[[Any], Awaitable[Any]]) -> Any:
    # imported here: the mcp client costs a second to import, and only agents whose skills use MCP need it
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout_s))
    try:
        async with asyncio.timeout(timeout_s):
            async with Client(streamable_http_client(url, http_client=http), raise_exceptions=True) as client:
                return await act(client)
    except HeroError:
        raise
    except TimeoutError:
        raise SkillFailed(f"MCP server {url} did not answer within {timeout_s:g} s") from None
    except Exception as exc:  # down, garbage, a refusal, a protocol error: the server's fault, said in one line
        cause = _leaf(exc)
        if isinstance(cause, OSError | httpx2.TransportError):
            raise SkillFailed(f"MCP server {url} cannot be reached: {_why(cause)}") from None
        raise SkillFailed(f"MCP server {url} did not answer as an MCP server: {_why(cause)}") from None
    finally:
        await http.aclose()


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside the task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

