"""The default personal agent: skills first, then the node's LLM, with its own memory.

Turn shape for a chat message: append the user's message and persist it (the
event is now accepted: it survives a crash), try each skill, else stream an LLM
reply built from the agent's own history, then append and persist the reply.
"""

from __future__ import annotations

from agents.skills import memory, reminders
from hero.chat.agent import ChatAgent
from hero.runtime.agent import AgentContext
from hero.runtime.events import ChatMessage, Event, OverlayMessage, Ping, Reply, TimerFired

SYSTEM = "You are a helpful personal assistant. Answer briefly and kindly."
SKILLS = (reminders.handle, memory.handle)
HISTORY_WINDOW = 40  # entries offered to the LLM; the LLM service trims further to fit its context
PROMPT_KINDS = ("chat", "reminder", "stopped")  # what the model sees of the history (not errors, not overlay)


class Assistant(ChatAgent):
    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage):
            await self.chat(event, reply)
        elif isinstance(event, TimerFired):
            await self.timer(event, reply)
        elif isinstance(event, OverlayMessage):
            await self.overlay(event, reply)
        elif isinstance(event, Ping):
            reply.accept()

    async def chat(self, event: ChatMessage, reply: Reply) -> None:
        ctx, history = self.ctx, self.history
        history.add("user", event.text)
        await ctx.persist()
        reply.accept()
        for skill in SKILLS:
            answer = await skill(ctx, event.text)
            if answer is not None:
                reply.write(answer)
                history.add("assistant", answer)
                await ctx.persist()
                return
        parts: list[str] = []
        options = {"max_tokens": event.max_tokens, "temperature": event.temperature, "interactive": event.interactive}
        async for delta in ctx.stream_llm(self.prompt(), reply, **options):
            parts.append(delta)
            reply.write(delta)
        reply.finish_reason = str(reply.usage.pop("finish_reason", "stop"))
        text = "".join(parts).strip()
        if text:  # a reply stopped before its first token leaves no entry, never an empty one
            history.add("assistant", text, kind="stopped" if reply.cancelled else "chat")
            await ctx.persist()

    async def overlay(self, event: OverlayMessage, reply: Reply) -> None:
        """A message from an allowed overlay sender: kept apart in history, answered by the LLM (no skills run).
        The answer to a message this agent sent is kept and not answered."""
        ctx, history = self.ctx, self.history
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
        if event.name == reminders.TIMER:
            text = reminders.fired_message(event.payload)
            self.history.add("assistant", text, kind="reminder")
            await self.ctx.persist()
            reply.write(text)

    def prompt(self) -> list[dict[str, str]]:
        system = SYSTEM
        known = memory.facts(self.ctx)
        if known:
            system += " Facts about the user: " + "; ".join(known)
        history = [
            {"role": entry.role, "content": entry.content}
            for entry in self.history.recent(HISTORY_WINDOW)
            if entry.kind in PROMPT_KINDS and entry.content
        ]
        return [{"role": "system", "content": system}, *history]


def create(ctx: AgentContext) -> Assistant:
    return Assistant(ctx)
