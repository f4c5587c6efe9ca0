"""Native tool calling: a model whose chat template renders `tools` is offered them that way, and its reply is
constrained to a plain answer or one call written in the template's own syntax.

The syntaxes Hero knows (`hero.seams.llm.ToolSyntax`, read from the template by
the model's service):

- ``hermes`` (Hermes, Qwen 2/2.5/3 and many fine-tunes):
  ``<tool_call>\\n{"name": "notes.search", "arguments": {...}}\\n</tool_call>``
- ``llama3`` (Llama 3.1/3.2 JSON calls): ``{"name": "notes.search", "parameters": {...}}``
- ``mistral`` (Mistral's v3 templates): ``[TOOL_CALLS][{"name": "notes.search", "arguments": {...}}]``

Every other model keeps Hero's own JSON call (`hero.skills.grammar`). Either
way the grammar lets through only a well-formed call of an offered tool with
arguments that fit its schema, and the arguments are still checked against the
schema before the call (`Tool.validate`). One call per reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hero.errors import InvalidArguments
from hero.seams.llm import ToolSyntax
from hero.skills import grammar
from hero.skills.grammar import ToolCall
from hero.skills.tools import Tool


@dataclass(frozen=True)
class CallFormat:
    """How a reply calls a tool: the model's native syntax (`native`), or Hero's JSON object."""

    syntax: str
    opens: str  # the characters a call may begin with; a plain answer begins with none of them
    before: str = ""  # what the call's JSON object is wrapped in
    after: str = ""
    name: str = "name"  # the object's keys
    arguments: str = "arguments"
    native: bool = True

    def grammar(self, tools: Sequence[Tool], *, plain: bool = True) -> str:
        """The GBNF grammar of one call of one of `tools` (at least one), or (with `plain`) a plain answer."""
        if not self.native:
            return grammar.gbnf(tools, plain=plain)
        if not tools:
            raise ValueError("a tool-call grammar needs at least one tool")
        starts = "".join(f"\\{c}" if c in "[]\\^-" else c for c in self.opens)
        call = " ".join(part for part in (_literal(self.before), "object", _literal(self.after)) if part)
        return "\n".join([
            "root ::= call | plain" if plain else "root ::= call",
            f"plain ::= [^{starts} \\t\\n\\r] [^\\x00]*",
            f"call ::= {call}",
            *grammar.object_rules(tools, "object", name=self.name, arguments=self.arguments),
        ]) + "\n"

    def specs(self, tools: Sequence[Tool]) -> list[dict[str, Any]] | None:
        """The tools as the chat template takes them (OpenAI-style function specs); None for Hero's JSON."""
        if not self.native:
            return None
        return [{"type": "function", "function": tool.describe()} for tool in tools]

    def is_call(self, text: str) -> bool:
        """Whether a reply beginning with `text` is a call (decided at its first character)."""
        head = text.lstrip()
        return bool(head) and head[0] in self.opens

    def parse(self, text: str) -> ToolCall | None:
        """The call `text` makes, or None for a plain answer; `InvalidArguments` for a call that does not parse
        (one cut short by the token limit, or not written as this syntax writes a call)."""
        if not self.native:
            return grammar.parse(text)
        body = text.strip()
        if not self.is_call(body):
            return None
        # The wrapper may be special tokens a model's detokenizer leaves out: it is optional here.
        marker = self.before.strip().rstrip("[")
        if marker and body.startswith(marker):
            body = body[len(marker):].lstrip()
        if self.before.endswith("[") and body.startswith("["):
            body = body[1:].lstrip()
        try:
            raw, _ = json.JSONDecoder().raw_decode(body)
        except ValueError:
            raise InvalidArguments("the model's tool call is not complete JSON (cut short?)",
                                   field="arguments") from None
        if not isinstance(raw, dict):
            raise InvalidArguments("the model's tool call is not a JSON object", field="tool")
        arguments = raw.get(self.arguments, raw.get("arguments", raw.get("parameters")))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise InvalidArguments("the model's tool call arguments are not JSON", field="arguments") from None
        if not isinstance(raw.get(self.name), str) or arguments is None:
            raise InvalidArguments("the model's tool call needs a tool name and arguments", field="tool")
        return ToolCall(raw[self.name], arguments)


JSON = CallFormat("json", opens="{", name="tool", native=False)
FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat("hermes", opens="<{", before="<tool_call>\n", after="\n</tool_call>"),
    "llama3": CallFormat("llama3", opens="{", arguments="parameters"),
    "mistral": CallFormat("mistral", opens="[{", before="[TOOL_CALLS][", after="]"),
}


def call_format(syntax: ToolSyntax | None) -> CallFormat:
    """The call format for a model whose template writes calls in `syntax` (None: Hero's JSON)."""
    return FORMATS.get(syntax, JSON) if syntax is not None else JSON


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""
