"""A tool's JSON schema, derived from its type hints and docstring (with pydantic), and its arguments checked
against it before every call, whoever calls it: the model, a slash command or an MCP client.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from hero.errors import InvalidArguments, SkillFailed, SkillRefused

ARGS = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
ARG = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
MAX_RESULT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Tool:
    skill: str
    name: str
    description: str
    schema: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., Any]
    model: type[pydantic.BaseModel] | None  # None: checked against `schema` itself (an MCP server's tool)

    @property
    def qualified(self) -> str:
        return f"{self.skill}.{self.name}"

    def validate(self, arguments: object) -> dict[str, Any]:
        """The arguments as the function takes them; `InvalidArguments` naming the first bad one."""
        if not isinstance(arguments, dict):
            raise InvalidArguments(f"{self.qualified}: arguments must be a JSON object, not {_kind(arguments)}",
                                   field="arguments")
        if self.model is None:
            return self._validate_schema(arguments)
        try:
            parsed = self.model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "arguments"
            raise InvalidArguments(f"{self.qualified}: argument {where!r}: {error['msg']}",
                                   field=f"arguments.{where}") from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    def _validate_schema(self, arguments: dict[str, Any]) -> dict[str, Any]:
        import jsonschema  # with the mcp package; only remote tools need it

        try:
            validator = jsonschema.validators.validator_for(self.schema)(self.schema)
            error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        except jsonschema.exceptions.SchemaError as exc:
            raise InvalidArguments(f"{self.qualified}: its schema is not valid: {exc.message}", field="tool") from None
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "arguments"
            raise InvalidArguments(f"{self.qualified}: argument {where!r}: {error.message}",
                                   field=f"arguments.{where}")
        return arguments

    def describe(self) -> dict[str, Any]:
        """As offered to a model or an MCP client."""
        return {"name": self.qualified, "description": self.description, "parameters": self.schema}


def make_tool(skill: str, name: str, fn: Callable[..., Any], description: str = "") -> Tool:
    """The tool `fn` defines; `SkillRefused` naming the skill, the tool and the fault if its hints make no schema."""
    where = f"skill {skill}: tool {name}"
    doc_text, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError) as exc:
        raise SkillRefused(f"{where}: its type hints cannot be read: {exc}") from None
    params = list(signature.parameters.values())
    if not params or params[0].name != "ctx":
        raise SkillRefused(f"{where}: its first parameter must be ctx (the SkillContext)")
    fields: dict[str, Any] = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise SkillRefused(f"{where}: *{p.name} has no JSON schema; name each argument")
        if p.annotation is p.empty:
            raise SkillRefused(f"{where}: argument {p.name!r} needs a type hint (its JSON schema comes from it)")
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (p.annotation, pydantic.Field(default, description=arg_docs.get(p.name)))
    try:
        model = pydantic.create_model(
            f"{skill}_{name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
        )
        schema = model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise SkillRefused(f"{where}: its arguments have no JSON schema: {_first_line(exc)}") from None
    return Tool(skill, name, description or doc_text or name, _clean(schema), fn, model)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (the text before an `Args:` section) and each argument's line from that section."""
    lines = doc.splitlines()
    args: dict[str, str] = {}
    text: list[str] = []
    current: str | None = None
    in_args = False
    for line in lines:
        if ARGS.match(line):
            in_args = True
            continue
        if not in_args:
            text.append(line)
            continue
        match = ARG.match(line)
        if match and (current is None or len(line) - len(line.lstrip()) <= 8):
            current = match[1]
            args[current] = match[2].strip()
        elif line.strip() and current is not None:
            args[current] = f"{args[current]} {line.strip()}"
        elif not line.strip():
            current = None
    return " ".join(" ".join(text).split()), args


def _clean(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's schema without the titles it adds (noise to a model, and tokens in every prompt)."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    out = walk(schema)
    out.setdefault("properties", {})
    return out


def check_result(tool: str, value: object) -> object:
    """What a tool returned, if it is JSON (and not huge); else `SkillFailed` saying what it was."""
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SkillFailed(f"tool {tool} returned {_kind(value)}, which is not JSON ({_first_line(exc)})") from None
    if size > MAX_RESULT_BYTES:
        raise SkillFailed(f"tool {tool} returned {size} bytes of JSON; at most {MAX_RESULT_BYTES} are taken")
    return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
