"""What the runtime needs from other parts, as protocols: the runtime ↔ power, scheduler and net seams.

The runtime reports what each turn cost; power turns that into joules and
watts and answers admission questions. Agents ask the node's one LLM for
completions. The runtime never imports those parts' internals, only these shapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from hero.runtime.events import OverlayMessage

T = TypeVar("T")


class Metering(Protocol):
    def run_turn(self, agent_id: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        """Wrap an agent's turn so the CPU time of every step (between awaits) is charged to `agent_id`."""
        ...

    def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
        """Charge inference CPU time, measured in the inference thread, to the agent that asked. Thread-safe."""
        ...

    def charge_storage(self, agent_id: str, nbytes: int) -> None:
        """Charge bytes written to or read from the store for this agent."""
        ...


class Admission(Protocol):
    def admit(self, agent_id: str, *, interactive: bool) -> None:
        """Return if work may start now; raise `Overloaded` (with retry_after) if it must wait.

        Interactive work (a user's chat) is admitted first; background work
        (timers marked non-interactive, API calls flagged background) is deferred.
        """
        ...


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
        grammar: str | None = None,
    ) -> AsyncIterator[str]:
        """Stream a completion of `messages` (OpenAI-style role/content dicts) for `agent_id`, token by token;
        with a `grammar` (GBNF), only text it allows (constrained decoding: tool calls)."""
        ...


class Messenger(Protocol):
    async def send(self, sender: str, to: str, payload: bytes, *, agent: str | None = None, topic: bytes = b"",
                   wait_s: float | None = None) -> OverlayMessage | None:
        """Send `payload` over the overlay from agent `sender` to `to` (an overlay address, a node's public key,
        or an agent id, hex), or to agent `agent` on the node `to` names. With `wait_s`, wait that long for the
        answer and return it (None if none came in time); without, return once it is on its way.
        Raises NotFound (nothing answers to `to`), BadRequest (`to` is not an address or key) or Unavailable."""
        ...
