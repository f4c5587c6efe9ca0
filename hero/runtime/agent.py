"""What an agent is to the runtime, and what the runtime offers an agent during its turn.

Skill developers subclass `Agent` (see `agents/`; `hero.chat.agent.ChatAgent` for one
that keeps a chat history). An agent holds its state in `self.ctx.state` (a
JSON-able dict); the runtime loads it on activation and writes it on
`ctx.persist()` and on hibernation. Turns are serial per agent.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from hero.errors import Unavailable
from hero.runtime.events import Event, OverlayMessage, Reply
from hero.runtime.timers import Timer
from hero.seams.llm import LLM
from hero.seams.net import Messenger


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
        publish: Callable[[object], None],
        messenger: Messenger | None = None,
        services: Mapping[str, object] | None = None,
        seal: Callable[[str, bytes], None] | None = None,
        load: Callable[[str], Awaitable[bytes]] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.services: Mapping[str, object] = services or {}  # node-wide services for agents (e.g. "skills")
        self.state = state
        self.llm = llm
        self._persist = persist
        self._schedule = schedule
        self._unschedule = unschedule
        self._publish = publish
        self._messenger = messenger
        self._seal = seal
        self._load = load

    async def persist(self) -> None:
        """Write the state now (nothing is written if it did not change): what the agent accepted survives a crash."""
        await self._persist()

    def seal(self, name: str, data: bytes) -> None:
        """Keep `data` as the agent's immutable object `name` (such as a sealed history segment): written once,
        before the next write of the state, which may then refer to it; a crash in between writes it again."""
        if self._seal is None:
            raise Unavailable("this agent's runtime keeps no sealed objects")
        self._seal(name, data)

    async def load(self, name: str) -> bytes:
        """An object kept with `seal` (one not written yet too). Raises the store's error if it cannot be read."""
        if self._load is None:
            raise Unavailable("this agent's runtime keeps no sealed objects")
        return await self._load(name)

    def publish(self, item: object) -> None:
        """Tell the agent's live listeners (its user's devices) about `item`; they subscribe by its type."""
        self._publish(item)

    async def set_timer(
        self, delay_s: float, name: str, payload: dict[str, Any] | None = None, *, interactive: bool = False
    ) -> Timer:
        timer = Timer(time.time() + delay_s, uuid.uuid4().hex, self.agent_id, name, payload or {}, interactive)
        await self._schedule(timer)
        return timer

    async def cancel_timer(self, timer_id: str) -> None:
        await self._unschedule(timer_id)

    async def send(self, to: str, payload: bytes | str, *, agent: str | None = None, topic: bytes = b"",
                   wait_s: float | None = None) -> OverlayMessage | None:
        """Send over the overlay to `to` (an overlay address, a node's public key, or an agent id), or to agent
        `agent` on the node `to` names; with `wait_s`, wait that long for the answer (None if none came)."""
        if self._messenger is None:
            raise Unavailable("this node runs no overlay: agents cannot send")
        data = payload.encode() if isinstance(payload, str) else payload
        return await self._messenger.send(self.agent_id, to, data, agent=agent, topic=topic, wait_s=wait_s)

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

    def on_failure(self, notice: str) -> None:  # noqa: B027 - an optional hook; an agent with no user to tell skips it
        """A turn raised, or a timer was set aside: `notice` says so in the user's words. The runtime persists
        the state after this, so what the agent keeps of it (a chat agent: one error entry) is durable."""

    async def on_activate(self) -> None:  # noqa: B027 - an optional hook; most agents need nothing more
        """Called once the agent is built, before its first turn: read what its turns will want at once (a chat
        agent: the newest sealed part of its history). A failure here is logged and the agent runs anyway."""

    async def on_hibernate(self) -> None:  # noqa: B027 - an optional hook; most agents keep state as it is
        """Called before the state is written for hibernation; override to compact state."""


# Makes the agent of each activation (`hero.runtime.factory` loads one named in the config).
AgentFactory = Callable[[AgentContext], Agent]
