"""Test doubles for seams whose real part is not what a test is about; one of each, here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from hero.chat.agent import ChatAgent
from hero.runtime.events import ChatMessage, Event, Reply, TimerFired


class ScriptedLLM:
    """The LLM seam (`hero.seams.llm.LLM`) without a model: streams `tokens`, then, if `hold`, nothing more
    until the listener goes away (as a long reply does). Keeps the prompts it was given."""

    def __init__(self, tokens: Sequence[str] = (), *, hold: bool = False) -> None:
        self.tokens = list(tokens)
        self.hold = hold
        self.prompts: list[list[dict[str, str]]] = []
        self.tool_syntax = None  # no native tool calling: tool calls are Hero's JSON

    async def stream(
        self, agent_id: str, messages: list[dict[str, str]], *, should_stop: Callable[[], bool] | None = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        self.prompts.append(messages)
        for token in self.tokens:
            if should_stop is not None and should_stop():
                return
            yield token
        # The seam's stop signal is a predicate (the real service checks it between tokens), so it is polled.
        while self.hold and (should_stop is None or not should_stop()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Echo(ChatAgent):
    """A chat agent without the LLM, deterministic, for tests about the node rather than the model: a turn as the
    assistant does it (the user's entry persisted, the reply accepted, the answer `echo TEXT` persisted).

    Subclasses tune it: `sets_timers` (a message 'timer <seconds> <name>' sets that durable timer; a fired one is
    kept as a reminder), `silent` (the answer is kept but not sent), `think_s` (a pause before answering)."""

    sets_timers = False
    silent = False
    think_s = 0.0

    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage):
            self.history.add("user", event.text)
            await self.ctx.persist()
            reply.accept()
            if self.sets_timers and event.text.startswith("timer "):
                _, delay_s, name = event.text.split()
                await self.ctx.set_timer(float(delay_s), name)
            if self.think_s:
                await asyncio.sleep(self.think_s)
            if not self.silent:
                reply.write(f"echo {event.text}")
            self.history.add("assistant", f"echo {event.text}")
            await self.ctx.persist()
        elif self.sets_timers and isinstance(event, TimerFired):
            self.history.add("assistant", f"timer {event.name}", kind="reminder")
            await self.ctx.persist()
        else:
            reply.accept()
