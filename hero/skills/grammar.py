"""Grammar-constrained tool calls: the model's output is limited (llama.cpp GBNF, built by llama-cpp-python from a
JSON schema) to a call of one of the offered tools with arguments matching its schema, or to a plain answer.

A call is one JSON object, `{"tool": "notes.search", "arguments": {...}}`; a plain
answer is text that does not start with `{`. Strings and arrays get upper bounds in
the grammar (a small model must not write one string until the token limit), so a
finished call always parses; the arguments are still checked against the tool's own
schema before it runs (`Tool.validate`), whoever produced them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from hero.errors import InvalidArguments
from hero.skills.tools import Tool

MAX_STRING = 120  # characters of one string argument, in the grammar
MAX_ITEMS = 16  # items of one array argument, in the grammar
# JSON forbids raw control characters in strings (the converter's `char` allows them); no \u escapes either, so a
# string of MAX_STRING characters stays within a few hundred tokens
STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt])'
PLAIN = r"plain ::= [^{ \t\n\r] [^\x00]*"  # a plain answer: anything that does not open a JSON object
CALL_TOKENS = 160  # a reply that may be a call gets at least this many tokens (a call cut short is no call)


@dataclass(frozen=True)
class ToolCall:
    tool: str  # qualified: skill.tool
    arguments: dict[str, Any]


def call_schema(tools: Sequence[Tool], *, name: str = "tool", arguments: str = "arguments") -> dict[str, Any]:
    """The JSON schema of a call to any of `tools` (an object naming the tool under `name`, its arguments under
    `arguments`)."""
    calls = [
        {
            "type": "object",
            "properties": {name: {"const": tool.qualified}, arguments: bounded(tool.schema)},
            "required": [name, arguments],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return calls[0] if len(calls) == 1 else {"oneOf": calls}


def bounded(schema: Any) -> Any:
    """`schema` with a maximum length on every string and a maximum count on every array that has none."""
    if isinstance(schema, list):
        return [bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded(value) for key, value in schema.items()}
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out and "pattern" not in out:
        out["maxLength"] = MAX_STRING
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = MAX_ITEMS
    return out


def gbnf(tools: Sequence[Tool], *, plain: bool = True) -> str:
    """The GBNF grammar of a call to one of `tools`, or (with `plain`) a plain answer instead."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    lines = object_rules(tools, "call" if plain else "root")
    if plain:
        lines = ["root ::= call | plain", PLAIN, *lines]
    return "\n".join(lines) + "\n"


def object_rules(tools: Sequence[Tool], rule: str, *, name: str = "tool", arguments: str = "arguments") -> list[str]:
    """GBNF rules whose `rule` is a call to one of `tools` as one JSON object (see `call_schema`)."""
    grammar = json_schema_to_gbnf(json.dumps(call_schema(tools, name=name, arguments=arguments)),
                                  prop_order=[name, arguments])
    lines = [STRICT_CHAR if line.startswith("char ::=") else line for line in grammar.splitlines()]
    return [(f"{rule} ::=" + line[len("root ::="):]) if line.startswith("root ::=") else line for line in lines]


def parse(text: str) -> ToolCall | None:
    """The call `text` makes, or None for a plain answer; `InvalidArguments` for a call that does not parse (one
    cut short by the token limit)."""
    body = text.strip()
    if not body.startswith("{"):
        return None
    try:
        raw = json.loads(body)
    except ValueError:
        raise InvalidArguments("the model's tool call is not complete JSON (cut short?)", field="arguments") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tool"), str) or "arguments" not in raw:
        raise InvalidArguments("the model's tool call needs a tool name and arguments", field="tool")
    return ToolCall(raw["tool"], raw["arguments"])


def tools_prompt(tools: Sequence[Tool]) -> str:
    """What the system prompt says about the tools (and how to call one)."""
    lines = [
        "You can call a tool. To call one, reply with only a JSON object: "
        '{"tool": NAME, "arguments": {...}}. Otherwise answer in plain words. Tools:'
    ]
    for tool in tools:
        args = ", ".join(
            f"{name}: {prop.get('type', 'any')}" for name, prop in tool.schema.get("properties", {}).items()
        )
        lines.append(f"- {tool.qualified}({args}): {tool.description}")
    return "\n".join(lines)
