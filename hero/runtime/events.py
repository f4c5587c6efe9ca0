"""Events that activate an agent (each runs one turn), and the reply channel a turn speaks into."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hero.errors import AgentError, HeroError


@dataclass(frozen=True)
class ChatMessage:
    """A user's message to their own agent."""

    text: str
    interactive: bool = True
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class TimerFired:
    """A durable timer came due; it activates the agent even if it was hibernated."""

    timer_id: str
    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    interactive: bool = False


@dataclass(frozen=True)
class Ping:
    """A no-op event: activates the agent and runs an empty turn (benchmarks, health checks)."""

    interactive: bool = True


@dataclass(frozen=True)
class OverlayMessage:
    """A message that came over the overlay for this agent (from another node, agent or Mycelium client).

    The sender is the authenticated key of the node it came from (`src_agent`: the agent there that sent
    it, as that node says); what the agent writes into the reply goes back to the sender as a Mycelium
    reply to `message_id`. `reply` marks the answer to a message this agent sent (nothing goes back).
    """

    message_id: str
    src_pk: str
    src_ip: str
    topic: bytes
    payload: bytes
    interactive: bool = False
    src_agent: str | None = None
    reply: bool = False

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ApiRequest:
    """A request from the agent's own user through an API other than chat (an MCP client's `tools/list`,
    `tools/call`): the agent answers in the reply, as JSON text. It runs as a turn like any event (the same
    permissions, the same ledger)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    interactive: bool = True


Event = ChatMessage | TimerFired | Ping | OverlayMessage | ApiRequest

class Reply:
    """What the agent says back to one event: text deltas, then the end or an error.

    `wait_accepted` returns once the event is durable (in the agent's history), so
    the edge can answer 2xx only for events that survive a crash. Deltas are
    buffered unboundedly: a slow or gone client never stalls the agent's turn.
    It is deliberately light (a deque; futures only for those who wait): every event has one.
    """

    __slots__ = (
        "_acceptance", "_accepted", "_done", "_error", "_items", "_waiter", "cancelled", "finish_reason", "usage"
    )

    def __init__(self) -> None:
        self._items: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._acceptance: bool | BaseException = False  # True once accepted; the error if refused
        self._accepted: asyncio.Future[None] | None = None  # made for the first waiter
        self.finish_reason = "stop"
        self.usage: dict[str, Any] = {}  # prompt_tokens, completion_tokens, finish_reason: filled by the model
        self.cancelled = False

    @property
    def accepted(self) -> bool:
        """The event is durable: it survives a crash."""
        return self._acceptance is True

    def accept(self) -> None:
        if self._acceptance is False:
            self._acceptance = True
            if self._accepted is not None:
                self._accepted.set_result(None)

    def write(self, text: str) -> None:
        if text and not self._done:
            self._items.append(text)
            self._wake()

    def close(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._acceptance is False:
            self._acceptance = error
            if self._accepted is not None:
                self._accepted.set_exception(error)
                self._accepted.exception()  # mark retrieved; the edge reads it through `wait_accepted`
        if self._error is None and not self._done:
            self._error = error
        self.close()

    def interrupt(self, error: HeroError) -> None:
        """End the listener's side now with `error` (the node is shutting down) and ask the turn to stop."""
        self.cancelled = True
        if self._error is None and not self._done:
            self._error = error
        self.close()

    def cancel(self) -> None:
        """The listener has gone (client disconnect, user pressed stop): the turn may cut generation short."""
        self.cancelled = True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_accepted(self) -> None:
        """Return once the event is accepted; raise the error that refused it."""
        if self._acceptance is True:
            return
        if self._acceptance is not False:
            raise self._acceptance
        if self._accepted is None:
            self._accepted = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._accepted)

    async def text(self) -> str:
        return "".join([chunk async for chunk in self])

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self._done:
                break
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        if isinstance(self._error, HeroError):
            raise self._error
        if self._error is not None:
            raise AgentError("the agent failed to answer; the error was logged") from self._error
