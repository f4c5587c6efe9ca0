"""Test doubles for seams whose real part is not what a test is about; one of each, here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any


class ScriptedLLM:
    """The LLM seam (`hero.seams.llm.LLM`) without a model: streams `tokens`, then, if `hold`, nothing more
    until the listener goes away (as a long reply does). Keeps the prompts it was given."""

    def __init__(self, tokens: Sequence[str] = (), *, hold: bool = False) -> None:
        self.tokens = list(tokens)
        self.hold = hold
        self.prompts: list[list[dict[str, str]]] = []

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
