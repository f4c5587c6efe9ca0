"""An agent's skills at work: slash commands (with /help and /call), the phrasings skills understand, timers and
overlay messages routed to the skill they belong to, and tool calls made by the model or by the owner's MCP client.

Every call goes through `SkillContext.call` (permissions, time limit, quota,
contained failures); every tool call's arguments are checked against the tool's
schema first, whoever made them.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from hero.errors import HeroError, InvalidArguments, NotFound
from hero.runtime.agent import AgentContext
from hero.runtime.events import OverlayMessage, TimerFired
from hero.skills.context import TIMER_PREFIX, SkillContext, SkillServices
from hero.skills.host import Resolved
from hero.skills.remote import RemoteTools
from hero.skills.skill import Skill
from hero.skills.tools import Tool, check_result

log = logging.getLogger("hero.skills")
LEGACY_TIMERS = {"reminder": "reminders"}  # timers set before skills had names of their own
MAX_PROMPT_LINE = 2000  # characters one skill's prompt line may add (about 500 tokens)


class AgentSkills:
    def __init__(self, ctx: AgentContext, resolved: Resolved, services: SkillServices,
                 remote: RemoteTools | None = None) -> None:
        self.ctx = ctx
        self.resolved = resolved
        self.services = services
        self.remote = remote

    @property
    def skills(self) -> list[Skill]:
        return self.resolved.skills

    def skill(self, name: str) -> Skill | None:
        return next((s for s in self.skills if s.name == name), None)

    def context(self, skill: Skill, *, interactive: bool = True) -> SkillContext:
        return SkillContext(skill.manifest, self.ctx, self.services, interactive=interactive)

    # tools

    def tools(self) -> list[Tool]:
        """Every tool of the agent's skills, those of the MCP servers its skills use included."""
        out = [tool for skill in self.skills for tool in skill.tools.values()]
        if self.remote is not None:
            out += self.remote.tools({s.name for s in self.skills})
        return out

    def tool(self, qualified: str) -> Tool:
        for tool in self.tools():
            if tool.qualified == qualified:
                return tool
        raise NotFound(f"no tool {qualified!r} (see /help)", field="tool")

    async def call_tool(self, qualified: str, arguments: object, *, interactive: bool = True) -> object:
        """Check `arguments` against the tool's schema, then call it as this agent."""
        tool = self.tool(qualified)
        args = tool.validate(arguments)
        skill = self.skill(tool.skill)
        if skill is None:
            raise NotFound(f"no skill {tool.skill!r}", field="tool")
        sctx = self.context(skill, interactive=interactive)
        if self.remote is not None and self.remote.owns(tool):
            return await sctx.call(self.remote.caller(tool), args, what=f"tool {qualified}")
        result = await sctx.call(_keywords(tool.fn), args, what=f"tool {qualified}")
        return check_result(qualified, result)

    # chat

    async def command(self, text: str) -> str:
        """Answer a slash command (`/help`, `/call skill.tool {json}`, a skill's own)."""
        name, _, rest = text.strip()[1:].partition(" ")
        name, rest = name.lower(), rest.strip()
        if name in ("help", "?", ""):
            return self.help()
        if name == "call":
            return await self._call_command(rest)
        if name == "mcp" and self.remote is not None:
            return await self.remote.command(rest, {s.name: s for s in self.skills})
        for skill in self.skills:
            found = skill.commands.get(name)
            if found is not None:
                result = await self.context(skill).call(found.fn, rest, what=f"/{name}")
                return _as_text(result)
        return f"Unknown command /{name}. Try /help."

    async def _call_command(self, rest: str) -> str:
        qualified, _, raw = rest.partition(" ")
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise InvalidArguments("/call takes a tool name and its arguments as a JSON object",
                                   field="arguments") from None
        return _as_text(await self.call_tool(qualified, arguments))

    async def message(self, text: str) -> str | None:
        """The first answer a skill gives to `text` (the phrasings skills understand), or None."""
        for skill in self.skills:
            for handler in skill.messages:
                answer = await self.context(skill).call(handler, text, what="a message")
                if answer is not None:
                    return _as_text(answer)
        return None

    async def prompt(self, text: str = "") -> list[str]:
        """What the agent's skills add to the model's system prompt when it answers `text`; a line longer than
        `MAX_PROMPT_LINE` characters is clipped (a skill's line must never crowd the conversation out)."""
        lines: list[str] = []
        for skill in self.skills:
            for handler in skill.prompts:
                args = (text,) if _takes_text(handler) else ()
                try:
                    line = await self.context(skill).call(handler, *args, what="prompt")
                except HeroError as exc:
                    log.warning("agent %s: %s", self.ctx.agent_id[:12], exc.message)
                    continue
                if line:
                    line = str(line)
                    lines.append(line if len(line) <= MAX_PROMPT_LINE else line[:MAX_PROMPT_LINE - 1] + "…")
        return lines

    # timers and overlay messages

    def timer_skill(self, event: TimerFired) -> Skill | None:
        name = event.name[len(TIMER_PREFIX):] if event.name.startswith(TIMER_PREFIX) else LEGACY_TIMERS.get(event.name)
        return self.skill(name) if name else None

    async def timer(self, event: TimerFired) -> str | None:
        skill = self.timer_skill(event)
        if skill is None:
            return None
        for handler in skill.timers:
            payload = {**event.payload, "timer_id": event.timer_id}
            answer = await self.context(skill, interactive=event.interactive).call(
                handler, payload, what=f"timer {event.timer_id[:8]}")
            if answer is not None:
                return _as_text(answer)
        return None

    def overlay_skill(self, event: OverlayMessage) -> Skill | None:
        topic = event.topic.decode("utf-8", errors="replace")
        return next((s for s in self.skills if topic in s.overlay), None)

    async def overlay(self, event: OverlayMessage) -> str | None:
        skill = self.overlay_skill(event)
        if skill is None:
            return None
        handler = skill.overlay[event.topic.decode("utf-8", errors="replace")]
        answer = await self.context(skill, interactive=False).call(handler, event, what="an overlay message")
        return None if answer is None else _as_text(answer)

    # /help

    def help(self) -> str:
        lines = ["Skills:"]
        for skill in self.skills:
            lines.append(f"• {skill.name} {skill.version}: {skill.manifest.description}")
            for cmd in skill.commands.values():
                lines.append(f"    {cmd.usage}")
            for tool in skill.tools.values():
                lines.append(f"    /call {tool.qualified} {_args_hint(tool)}: {tool.description}")
        if self.remote is not None:
            for tool in self.remote.tools({s.name for s in self.skills}):
                lines.append(f"    /call {tool.qualified} {_args_hint(tool)}: {tool.description} (MCP)")
        for name, why in self.resolved.missing.items():
            lines.append(f"• {name}: not run: {why}")
        lines.append("/help lists this; /call SKILL.TOOL {json} calls a tool; /mcp adds an MCP server to a skill.")
        return "\n".join(lines)


def _args_hint(tool: Tool) -> str:
    props: dict[str, Any] = tool.schema.get("properties", {})
    required: Sequence[str] = tool.schema.get("required", [])
    return "{" + ", ".join(f'"{n}"{"" if n in required else "?"}' for n in props) + "}"


@functools.cache
def _takes_text(fn: Callable[..., Any]) -> bool:
    """Whether a prompt handler takes the message being answered (`fn(ctx, text)`) or not (`fn(ctx)`)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _keywords(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(ctx, args)` as `fn(ctx, **args)`, keeping a plain function plain (it runs in a thread) and an async one
    async."""
    if inspect.iscoroutinefunction(fn):
        async def call_async(ctx: SkillContext, args: dict[str, Any]) -> Any:
            return await fn(ctx, **args)
        return call_async

    def call(ctx: SkillContext, args: dict[str, Any]) -> Any:
        return fn(ctx, **args)
    return call


def _as_text(value: object) -> str:
    """A skill's answer as the user reads it."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(f"• {_as_text(item)}" for item in value) if value else "(nothing)"
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_as_text(v) if isinstance(v, str) else json.dumps(v)}" for k, v in value.items())
    return json.dumps(value)
