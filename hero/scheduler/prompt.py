"""From an agent's messages to the prompt tokens that fit its context: template, trimming, tokenizing.

This runs in a worker thread before a request joins the queue, never on the
inference thread: however long a message is, its cost falls on the request
that carries it, not on the other agents decoding meanwhile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hero.errors import BadRequest
from hero.scheduler.llamacpp import Model
from hero.scheduler.template import ChatTemplate, Messages, Tools
from hero.scheduler.trim import trim_messages

TOOL_SETS_KEPT = 64  # tool sets whose token cost is remembered (beyond that the memory starts over)

_ATTEMPTS = 4  # renders per prompt at most: the per-message estimate is rarely short, and then only a little


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    start: int | None  # where the kept history begins, for the agent's next turn (see trim.py)
    dropped: int  # history messages left out
    cut: bool  # the newest message lost its beginning


class PromptBuilder:
    def __init__(self, model: Model, template: ChatTemplate, n_ctx: int) -> None:
        self.model = model
        self.template = template
        self.n_ctx = n_ctx
        self._tool_costs: dict[str, int] = {}  # a tool set (as JSON) -> its tokens: agents offer the same few sets
        template.calibrate(lambda text: len(model.tokenize(text, special=True)))

    def build(self, messages: Messages, *, max_tokens: int, start: int | None = None,
              tools: Tools | None = None) -> Prompt:
        """The prompt of `messages` (with `tools` if the template renders them), trimmed to fit."""
        if not messages:
            raise BadRequest("messages is empty", field="messages")
        if tools and self.template.tool_syntax is None:
            raise BadRequest("this model's chat template has no tool calling: call tools with a grammar",
                             field="tools")
        model = self.model
        budget = self.n_ctx - max_tokens
        tail = (budget + 1) * model.max_piece_bytes  # characters: a longer text cannot fit anyway

        tails: dict[int, list[int]] = {}  # each message's tokens, computed once per build

        def tokens(text: str) -> list[int]:
            found = tails.get(id(text))
            if found is None:
                found = tails[id(text)] = model.tokenize(text[-tail:], special=False) if text else []
            return found

        def count(text: str) -> int:
            return len(tokens(text))

        def cut_newest(text: str, n: int) -> str:
            return model.detokenize(tokens(text)[-n:]).lstrip()

        short = self.template.base + (self._tools_cost(tools) if tools else 0)
        for _ in range(_ATTEMPTS):
            trimmed = trim_messages(
                messages,
                count,
                budget - short,
                per_message=self.template.per_message,
                cut_newest=cut_newest,
                start=start,
            )
            rendered = model.tokenize(self.template.render(trimmed.messages, tools), special=True)
            excess = len(rendered) - budget
            if excess <= 0:
                return Prompt(rendered, trimmed.start, trimmed.dropped, trimmed.cut)
            short += excess
            start = None
        raise BadRequest(f"these messages do not fit the model's {self.n_ctx}-token context", field="messages")

    def _tools_cost(self, tools: Tools) -> int:
        """The tokens the template spends on `tools` (their definitions, its instructions about them), measured
        once per set of tools: two renders and tokenizations are not repeated for every turn."""
        key = json.dumps(tools, sort_keys=True)
        cost = self._tool_costs.get(key)
        if cost is None:
            probe = [{"role": "user", "content": "u"}]
            count = self.model.tokenize
            cost = max(0, len(count(self.template.render(probe, tools), special=True))
                       - len(count(self.template.render(probe), special=True)))
            if len(self._tool_costs) >= TOOL_SETS_KEPT:
                self._tool_costs.clear()
            self._tool_costs[key] = cost
        return cost
