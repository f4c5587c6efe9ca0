"""The chat template: how a list of messages becomes the model's prompt, taken from the GGUF's metadata.

Every instruct GGUF carries its own Jinja template (`tokenizer.chat_template`);
it is rendered with llama-cpp-python's `Jinja2ChatFormatter`, as
`create_chat_completion` does, so `hero up --model PATH.gguf` works for any of
them. A GGUF without a template gets ChatML, the most common convention.
A template that renders `tools` is asked how it writes a call (`tool_syntax`),
so agents can use the model's native tool calling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE, Jinja2ChatFormatter

from hero.errors import BadRequest
from hero.seams.llm import ToolSyntax

log = logging.getLogger("hero.llm")

Messages = list[dict[str, str]]
Tools = list[dict[str, Any]]
# parses as llama.cpp's formatter renders: with loop controls and `{% generation %}` (as Transformers does)
_PARSER = jinja2.Environment(extensions=[Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols])
PROBE_TOOL = "probe_fn_q7x"  # the name of the call `_tool_syntax` asks the template to write


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
        self.tool_syntax = self._tool_syntax()

    def render(self, messages: Messages, tools: Tools | None = None) -> str:
        """The prompt for `messages` (and `tools`, OpenAI-style function specs, as the template writes them),
        ending where the assistant's reply begins.

        Some templates raise on a system message (they have no such role): the
        system text is then folded into the first user message.
        """
        try:
            return self._formatter(messages=messages, tools=tools).prompt  # type: ignore[arg-type]
        except Exception as exc:  # a template raises (raise_exception) for what it cannot express
            error = exc
        if any(m["role"] == "system" for m in messages):
            try:
                return self._formatter(messages=fold_system(messages), tools=tools).prompt  # type: ignore[arg-type]
            except Exception as exc:
                error = exc
        raise BadRequest(f"the model's chat template refused these messages: {error}", field="messages")

    def _tool_syntax(self) -> ToolSyntax | None:
        """How the template writes a tool call, or None if it renders no `tools` (or writes calls in a way Hero
        does not know). The template itself is asked: it renders an assistant's call to a probe tool."""
        try:
            if "tools" not in jinja2.meta.find_undeclared_variables(_PARSER.parse(self.source)):
                return None
        except jinja2.TemplateError as exc:
            log.warning("the model's chat template cannot be parsed (%s): tool calls are Hero's JSON", exc)
            return None
        # the offered tool has another name than the call, so the call is found wherever the tools are listed
        tool: dict[str, Any] = {"type": "function", "function": {"name": "probe_def", "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
        asked = "Zq7xWv asks"
        written = ""
        forms: tuple[object, ...] = ({}, "{}")
        for arguments in forms:  # some templates take the arguments as an object, others as a JSON string
            call = {"id": "call0", "type": "function", "function": {"name": PROBE_TOOL, "arguments": arguments}}
            messages: list[dict[str, Any]] = [{"role": "user", "content": asked},
                                              {"role": "assistant", "content": "", "tool_calls": [call]}]
            try:
                written = self._closed(messages=messages, tools=[tool]).prompt  # type: ignore[arg-type,list-item]
            except Exception:  # this template wants the other form, or cannot render a call at all
                continue
            written = written.rpartition(asked)[2]  # the assistant's turn (tools may be listed before the ask)
            if PROBE_TOOL in written:
                break
        if PROBE_TOOL not in written:  # the template writes no calls of its own: its text may still say how
            written = self.source
        if "<tool_call>" in written:
            return "hermes"
        if "[TOOL_CALLS]" in written:
            return "mistral"
        if PROBE_TOOL in written and '"parameters"' in written[written.find(PROBE_TOOL):][:40]:
            return "llama3"
        log.info("the chat template renders tools but writes calls in a form Hero does not know: tool calls "
                 "use Hero's JSON")
        return None

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
