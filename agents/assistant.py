"""The default personal agent: its skills first, then the node's LLM, which may call the skills' tools.

Turn shape for a chat message: find the agent's skills (its spec, verified by
the runtime before it activated the agent: a refused spec is never activated),
append the user's message and persist it (the event is now accepted: it survives
a crash), then a slash
command (`/help`, `/call`, a skill's own), else the phrasings the skills
understand, else a reply from the model, whose output is constrained to a valid
call of one of the skills' tools or a plain answer (in the model's own call
syntax if its chat template has native tool calling, else Hero's JSON:
hero/skills/native.py); then append and persist the reply. A skill that fails or
is refused costs that answer only: the user reads a one-line error, the operator
the log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hero.chat.agent import ChatAgent
from hero.errors import HeroError
from hero.runtime.agent import AgentContext
from hero.runtime.events import ApiRequest, ChatMessage, Event, OverlayMessage, Ping, Reply, TimerFired
from hero.skills.agent import AgentSkills
from hero.skills.context import slot
from hero.skills.grammar import tools_prompt
from hero.skills.host import SkillHost, shipped_host
from hero.skills.native import CallFormat, call_format
from hero.skills.remote import RemoteTools

log = logging.getLogger("hero.agents")
SYSTEM = "You are a helpful personal assistant. Answer briefly and kindly."
HISTORY_WINDOW = 40  # at most this many history entries are offered to the LLM (it trims further to fit)
HISTORY_STEP = 20  # the window's start moves this many entries at a time: consecutive turns share their prompt
PROMPT_KINDS = ("chat", "reminder", "stopped")  # what the model sees of the history (not errors, not overlay)


class Assistant(ChatAgent):
    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        host = ctx.services.get("skills")
        self.host = host if isinstance(host, SkillHost) else shipped_host()
        self._skills: AgentSkills | None = None

    async def skills(self) -> AgentSkills:
        """The agent's skills, from its spec as verified when the runtime activated the agent (the host's)."""
        resolved = await self.host.resolve(self.ctx.agent_id)
        if self._skills is None:
            _migrate(self.ctx.state)
            self._skills = AgentSkills(self.ctx, resolved, self.host.services,
                                       RemoteTools(self.ctx, self.host.services))
        else:
            self._skills.resolved = resolved  # a dev skill may have been reloaded
        return self._skills

    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage):
            await self.chat(event, reply)
        elif isinstance(event, TimerFired):
            await self.timer(event, reply)
        elif isinstance(event, OverlayMessage):
            await self.overlay(event, reply)
        elif isinstance(event, ApiRequest):
            await self.api(event, reply)
        elif isinstance(event, Ping):
            reply.accept()

    async def chat(self, event: ChatMessage, reply: Reply) -> None:
        skills = await self.skills()
        ctx, history = self.ctx, self.history
        history.add("user", event.text)
        await ctx.persist()
        reply.accept()
        try:
            if event.text.lstrip().startswith("/"):
                answer: str | None = await skills.command(event.text)
            else:
                answer = await skills.message(event.text)
        except HeroError as exc:
            answer = f"⚠ {exc.message}"
        if answer is not None:
            await self._say(reply, answer)
            return
        await self.model_reply(event, reply, skills)

    async def _say(self, reply: Reply, text: str, *, kind: str = "chat") -> None:
        reply.write(text)
        self.history.add("assistant", text, kind=kind)
        await self.ctx.persist()

    async def model_reply(self, event: ChatMessage, reply: Reply, skills: AgentSkills) -> None:
        """Stream the model's reply; if it is a tool call (constrained to a valid one), run the tool instead.

        A model whose template has native tool calling gets the tools through the template and writes calls in
        its own syntax; any other gets them in the system prompt and writes Hero's JSON call."""
        tools = skills.tools() if skills.resolved.spec.limits.get("tool_calls", "grammar") != "off" else []
        form = call_format(self.ctx.llm.tool_syntax)
        options: dict[str, Any] = {"max_tokens": event.max_tokens, "temperature": event.temperature,
                                   "interactive": event.interactive}
        if tools:
            options["grammar"] = form.grammar(tools)
            if form.native:
                options["tools"] = form.specs(tools)
        messages = await self.prompt(skills, [] if form.native else tools, event.text)
        parts: list[str] = []
        call = opened = False  # opened: a delta with more than spaces came (a call opens the answer, or none)
        async for delta in self.ctx.stream_llm(messages, reply, **options):
            if tools and not call and not opened and form.is_call(delta):
                call = True
            opened = opened or bool(delta.strip())
            parts.append(delta)
            if not call:
                reply.write(delta)
        reply.finish_reason = str(reply.usage.pop("finish_reason", "stop"))
        text = "".join(parts).strip()
        if call:
            await self._say(reply, await self._run_call(skills, form, text))
            return
        if text:  # a reply stopped before its first token leaves no entry, never an empty one
            self.history.add("assistant", text, kind="stopped" if reply.cancelled else "chat")
            await self.ctx.persist()

    async def _run_call(self, skills: AgentSkills, form: CallFormat, text: str) -> str:
        try:
            call = form.parse(text)
            assert call is not None  # the text opens a call
            result = await skills.call_tool(call.tool, call.arguments, interactive=True)
        except HeroError as exc:
            log.info("agent %s: the model's tool call failed: %s", self.ctx.agent_id[:12], exc.message)
            return f"⚠ {exc.message}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)

    async def overlay(self, event: OverlayMessage, reply: Reply) -> None:
        """A message from an allowed overlay sender: a skill's topic goes to that skill (the ask skill: questions
        and answers); any other is kept apart in history and answered by the LLM. The answer to a message this
        agent sent is kept and not answered."""
        skills = await self.skills()
        ctx, history = self.ctx, self.history
        if skills.overlay_skill(event) is not None:
            reply.accept()
            try:
                answer = await skills.overlay(event)
            except HeroError as exc:
                answer = f"⚠ {exc.message}"
            if not event.reply:
                sender = (event.src_agent or event.src_pk)[:12]
                history.add("user", f"[agent {sender}… asked] {event.text}", kind="overlay")
            if answer:
                if not event.reply:
                    reply.write(answer)
                history.add("assistant", answer, kind="overlay")
            await ctx.persist()
            return
        history.add("user", f"[overlay {event.src_ip}] {event.text}", kind="overlay")
        await ctx.persist()
        reply.accept()
        if event.reply:
            return
        parts: list[str] = []
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": event.text}]
        async for delta in ctx.stream_llm(prompt, reply):
            parts.append(delta)
            reply.write(delta)
        text = "".join(parts).strip()
        if text:  # never an empty entry
            history.add("assistant", text, kind="overlay")
            await ctx.persist()

    async def timer(self, event: TimerFired, reply: Reply) -> None:
        skills = await self.skills()
        try:
            text = await skills.timer(event)
        except HeroError as exc:
            self.history.add("assistant", f"⚠ {exc.message}", kind="error")
            await self.ctx.persist()
            return
        if text is None:
            log.warning("agent %s: timer %s (%s) belongs to no enabled skill; dropped", self.ctx.agent_id[:12],
                        event.name, event.timer_id)
            return
        await self._say(reply, text, kind="reminder")

    async def api(self, event: ApiRequest, reply: Reply) -> None:
        """MCP (and other API) requests from the agent's own user: list the skills' tools, call one."""
        skills = await self.skills()
        reply.accept()
        if event.method == "tools/list":
            reply.write(json.dumps({"tools": [tool.describe() for tool in skills.tools()]}))
            return
        if event.method != "tools/call":
            reply.write(json.dumps({"error": {"message": f"unknown method {event.method!r}", "type": "not_found"}}))
            return
        try:
            result = await skills.call_tool(str(event.params.get("name", "")), event.params.get("arguments", {}),
                                            interactive=event.interactive)
        except HeroError as exc:
            reply.write(json.dumps({"error": {"message": exc.message, "type": exc.code}}))
            return
        finally:
            await self.ctx.persist()
        reply.write(json.dumps({"result": result}))

    async def prompt(self, skills: AgentSkills | None = None, tools: list[Any] | None = None,
                     text: str = "") -> list[dict[str, str]]:
        """The model's messages: the system prompt (with what the skills add for `text`, the message it answers, and
        the tools), then the history window."""
        system = SYSTEM
        if skills is not None:
            lines = await skills.prompt(text)
            if lines:
                system += " " + " ".join(lines)
        if tools:
            system += "\n" + tools_prompt(tools)
        history = [
            {"role": entry.role, "content": entry.content}
            for entry in self.history.recent(len(self.history) - window_start(len(self.history)))
            if entry.kind in PROMPT_KINDS and entry.content
        ]
        return [{"role": "system", "content": system}, *history]


def window_start(entries: int) -> int:
    """Where the history offered to the model begins: a multiple of `HISTORY_STEP`, the first that leaves at
    most `HISTORY_WINDOW` entries. It stays put for `HISTORY_STEP` entries (ten turns), so the next turn's
    prompt begins as this one's did and the model's service reuses it, instead of sliding each turn."""
    if entries <= HISTORY_WINDOW:
        return 0
    return -(-(entries - HISTORY_WINDOW) // HISTORY_STEP) * HISTORY_STEP


def _migrate(state: dict[str, Any]) -> None:
    """Facts kept by the memory handler before skills (`state["memory"]`) become notes of the notes skill."""
    memory = state.pop("memory", None)
    facts = memory.get("facts", []) if isinstance(memory, dict) else []
    if facts:
        notes = slot(state, "notes").setdefault("notes", [])
        start = (notes[-1]["id"] + 1) if notes else 1
        notes.extend({"id": start + i, "text": str(fact), "ts": 0.0} for i, fact in enumerate(facts))


def create(ctx: AgentContext) -> Assistant:
    return Assistant(ctx)
