"""What an agent is to the runtime, and what the runtime offers an agent during its turn.

Skill developers subclass `Agent` (see `agents/`). An agent holds its state in
`self.state` (a JSON-able dict); the runtime loads it on activation and writes
it on `ctx.persist()` and on hibernation. Turns are serial per agent.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hero.runtime.events import Event, Reply
from hero.runtime.state import repair_text
from hero.runtime.timers import Timer


@dataclass(frozen=True)
class Message:
    """One entry of an agent's conversation history."""

    seq: int
    role: str  # "user" | "assistant" | "system"
    content: str
    ts: float
    kind: str = "chat"  # "chat" | "reminder" | "error" | "stopped" (a reply cut short: stop button, shutdown)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "role": self.role, "content": self.content, "ts": self.ts, "kind": self.kind}


class LLM(Protocol):
    def stream(
        self,
        agent_id: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        usage: dict[str, Any] | None = None,
        interactive: bool = True,
    ) -> AsyncIterator[str]: ...


class AgentContext:
    """The runtime's services for one activated agent. Built by the node; agents only call it."""

    def __init__(
        self,
        agent_id: str,
        state: dict[str, Any],
        *,
        llm: LLM,
        persist: Callable[[], Awaitable[None]],
        schedule: Callable[[Timer], Awaitable[None]],
        unschedule: Callable[[str], Awaitable[None]],
        publish: Callable[[Message], None],
    ) -> None:
        self.agent_id = agent_id
        self.state = state
        self.llm = llm
        self._persist = persist
        self._schedule = schedule
        self._unschedule = unschedule
        self._publish = publish
        state.setdefault("history", [])
        state.setdefault("memory", {})
        state.setdefault("skills", {})

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state["history"]

    def add_message(self, role: str, content: str, *, kind: str = "chat") -> Message:
        """Append to history and tell live listeners (other devices of this user). Persist to make it durable.

        Text that is not valid Unicode (lone surrogates) is stored with U+FFFD in their place.
        """
        seq = self.history[-1]["seq"] + 1 if self.history else 1
        message = Message(seq, role, repair_text(content), time.time(), kind)
        self.history.append(message.to_json())
        self._publish(message)
        return message

    async def persist(self) -> None:
        await self._persist()

    async def set_timer(
        self, delay: float, name: str, payload: dict[str, Any] | None = None, *, interactive: bool = False
    ) -> Timer:
        timer = Timer(time.time() + delay, uuid.uuid4().hex, self.agent_id, name, payload or {}, interactive)
        await self._schedule(timer)
        return timer

    async def cancel_timer(self, timer_id: str) -> None:
        await self._unschedule(timer_id)

    def stream_llm(self, messages: list[dict[str, str]], reply: Reply, **options: Any) -> AsyncIterator[str]:
        """Stream a completion from the node's shared model; stops early if the listener goes away."""
        return self.llm.stream(
            self.agent_id, messages, should_stop=lambda: reply.cancelled, usage=reply.usage, **options
        )


class Agent(ABC):
    """Base class of agents. One instance per activation; `handle` runs one turn."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    @abstractmethod
    async def handle(self, event: Event, reply: Reply) -> None:
        """Handle one event, writing what the agent says into `reply`. Must call `reply.accept()` once durable."""

    async def on_hibernate(self) -> None:  # noqa: B027 - an optional hook; most agents keep state as it is
        """Called before the state is written for hibernation; override to compact state."""
