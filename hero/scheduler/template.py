"""The chat template: how a list of messages becomes the model's prompt, taken from the GGUF's metadata.

Every instruct GGUF carries its own Jinja template (`tokenizer.chat_template`);
it is rendered with llama-cpp-python's `Jinja2ChatFormatter`, as
`create_chat_completion` does, so `hero up --model PATH.gguf` works for any of
them. A GGUF without a template gets ChatML, the most common convention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE, Jinja2ChatFormatter

from hero.errors import BadRequest

log = logging.getLogger("hero.llm")

Messages = list[dict[str, str]]


class ChatTemplate:
    def __init__(self, source: str | None, *, bos: str, eos: str, stops: list[str]) -> None:
        self.builtin = source is None
        self.source = source or CHATML_CHAT_TEMPLATE
        self._formatter = Jinja2ChatFormatter(template=self.source, eos_token=eos, bos_token=bos)
        self._closed = Jinja2ChatFormatter(
            template=self.source, eos_token=eos, bos_token=bos, add_generation_prompt=False
        )
        # Text that ends a reply if the model writes it out instead of sampling an end token.
        self.stops = sorted({s for s in (eos, *stops, self._turn_end()) if s}, key=len)
        self.per_message = 0  # template tokens around one message, measured by `calibrate`
        self.base = 0  # template tokens per prompt besides those (generation prompt, default system prompt)

    def render(self, messages: Messages) -> str:
        """The prompt for `messages`, ending where the assistant's reply begins.

        Some templates raise on a system message (they have no such role): the
        system text is then folded into the first user message.
        """
        try:
            return self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        except Exception as exc:  # a template raises (raise_exception) for what it cannot express
            error = exc
        if any(m["role"] == "system" for m in messages):
            try:
                return self._formatter(messages=fold_system(messages)).prompt  # type: ignore[arg-type]
            except Exception as exc:
                error = exc
        raise BadRequest(f"the model's chat template refused these messages: {error}", field="messages")

    def _turn_end(self) -> str:
        """What the template writes after an assistant's message (`<|im_end|>`, `<end_of_turn>`, `</s>` …)."""
        mark = "Zq7xWv"
        try:
            text = self._closed(messages=[{"role": "user", "content": "u"}, {"role": "assistant", "content": mark}])
        except Exception:  # a template that cannot render this: the end tokens will do
            return ""
        after = text.prompt.rpartition(mark)[2].strip()
        return after.splitlines()[0].strip() if after else ""

    def calibrate(self, count: Callable[[str], int]) -> None:
        """Measure the template's tokens per message and per prompt, so trimming can budget without rendering.

        `base` is the larger of the fixed costs with and without a system
        message (some templates add a default system prompt when there is none).
        """
        probe = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "v"},
        ]

        def overhead(messages: Messages) -> int:
            return count(self.render(messages)) - sum(count(m["content"]) for m in messages)

        two = overhead(probe[:1] + probe[3:])  # system + user
        self.per_message = max(1, -(-(overhead(probe) - two) // 2))
        self.base = max(0, overhead(probe[3:]) - self.per_message, two - 2 * self.per_message)


def fold_system(messages: Messages) -> Messages:
    """For templates that refuse a system role: the system text goes in front of the first user message."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest:
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest
