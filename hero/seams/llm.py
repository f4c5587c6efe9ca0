"""The LLM seams: agents ask the node's one model for completions (runtime → scheduler); the web reads its
figures and the governor turns its knobs (web, power → scheduler). `hero.scheduler.llm.LLMService` is all three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

from hero.errors import Overloaded

# How a chat template writes a tool call (hero.skills.native reads and constrains each): Hermes/Qwen
# `<tool_call>{"name", "arguments"}</tool_call>`, Llama 3.1 `{"name", "parameters"}`, Mistral `[TOOL_CALLS][...]`.
ToolSyntax = Literal["hermes", "llama3", "mistral"]


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
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str]:
        """Stream a completion of `messages` (OpenAI-style role/content dicts) for `agent_id`, token by token;
        with a `grammar` (GBNF), only text it allows (constrained decoding: tool calls); with `tools`
        (OpenAI-style function specs), the model's own chat template renders them (only if `tool_syntax`)."""
        ...

    @property
    def tool_syntax(self) -> ToolSyntax | None:
        """How the model's chat template writes a tool call, or None: it has no native tool calling (or is not
        loaded yet), and tool calls are Hero's grammar-constrained JSON."""
        ...


class LLMStatus(Protocol):
    """What the web (status, models, health, /metrics) and the power reports read of the model's service."""

    @property
    def name(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        ...

    @property
    def threads(self) -> int: ...

    @property
    def tokens_total(self) -> int: ...

    @property
    def requests_total(self) -> int: ...

    @property
    def last_load_seconds(self) -> float | None: ...

    def figures(self) -> dict[str, Any]:
        """Batch, queue, KV cache, prompt reuse and parallel sequences, as the dashboard's LLM panel shows them."""
        ...


class GovernedLLM(LLMStatus, Protocol):
    """The governor's levers on the model's service: threads, parallel sequences, refusal, unloading."""

    @property
    def last_request_at(self) -> float | None: ...

    @property
    def parallel(self) -> int: ...

    @property
    def max_parallel(self) -> int: ...

    def set_threads(self, n: int) -> None: ...

    def set_parallel(self, n: int) -> None: ...

    def refusal(self, interactive: bool = True) -> Overloaded | None:
        """The error to refuse new work with while the model's queue is full, else None."""
        ...

    async def unload(self) -> None: ...
