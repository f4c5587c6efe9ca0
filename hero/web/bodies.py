"""Reading request bodies safely: a size cap, JSON that must be an object, and values every part can handle.

What JSON itself allows but nothing downstream can use is refused here, once,
naming the field: lone surrogates (`"\\ud800"` decodes to a Python string that
cannot be encoded as UTF-8, so it would poison the agent's history, the model's
prompt and every later response), NaN and Infinity, integers of more than 64
digits (Python refuses to convert ints past 4,300 digits) and nesting deeper
than `MAX_DEPTH` (Python's parser stops at about 1,000 levels with a
RecursionError, and deep values break anything that recurses over them).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, overload

from starlette.requests import Request

from hero import unicode
from hero.errors import BadRequest, InvalidField, PayloadTooLarge

MAX_DEPTH = 32  # a chat body needs 5 (body, messages, message, content parts, part)
MAX_DIGITS = 64  # no integer in the API needs more; longer ones are refused by name
THREAD_ABOVE_BYTES = 64 * 1024  # parse bigger bodies off the event loop


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    if len(body) > THREAD_ABOVE_BYTES:
        return await asyncio.to_thread(parse_json_object, bytes(body))
    return parse_json_object(bytes(body))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object whose every member is usable, or a BadRequest/InvalidField naming what is not."""
    try:
        text = body.decode(json.detect_encoding(body))
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    try:
        data = json.loads(text, parse_int=_parse_int, parse_constant=float)
    except RecursionError:
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels", field=_deep_member(text)) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    check_values(data)
    return data


def _parse_int(digits: str) -> int | float:
    """Integers past MAX_DIGITS become ±inf, which `check_values` refuses by name (never a lossy float)."""
    if len(digits) <= MAX_DIGITS:
        return int(digits)
    return -math.inf if digits.startswith("-") else math.inf


Path = tuple[str | int, ...]


def check_values(data: dict[str, Any]) -> None:
    """Walk the parsed body (iteratively: its depth is what is being checked) for unusable values."""
    stack: list[tuple[Any, Path]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidField(
                    f"{field_name(path)} must be a finite number of at most {MAX_DIGITS} digits",
                    field=field_name(path),
                )
        elif isinstance(value, dict | list):
            if len(path) >= MAX_DEPTH:
                raise BadRequest(f"{path[0]} nests deeper than {MAX_DEPTH} levels", field=_short(str(path[0])))
            if isinstance(value, dict):
                for key in value:
                    if not unicode.is_valid(key):
                        where = field_name(path) if path else None
                        raise InvalidField(
                            f"a member name in {where or 'the request body'} is not valid Unicode (a lone surrogate)",
                            field=where,
                        )
                stack.extend((item, (*path, key)) for key, item in value.items())
            else:
                stack.extend((item, (*path, i)) for i, item in enumerate(value))


def _check_text(text: str, path: Path) -> None:
    if not unicode.is_valid(text):
        where = field_name(path)
        position = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
        raise InvalidField(
            f"{where} is not valid Unicode: a lone surrogate \\u{ord(text[position]):04x} at character {position}",
            field=where,
        )


def field_name(path: Path) -> str:
    """`messages[0].content`, the way errors name fields."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{_short(part)}" if out else _short(part))
    return out


def _short(name: str) -> str:
    return name if len(name) <= 40 else name[:40] + "…"


def _deep_member(text: str) -> str | None:
    """Which top-level member of an object body holds the value too deep to parse (None if the body is not
    an object, or the depth is not in a member). Only runs on that error, member by member."""
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    if not text.startswith("{", index):
        return None
    index += 1
    while True:
        index = _skip_space(text, index)
        if not text.startswith('"', index):
            return None
        try:
            key, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return None
        index = _skip_space(text, index)
        if not text.startswith(":", index):
            return None
        try:
            _, index = decoder.raw_decode(text, _skip_space(text, index + 1))
        except RecursionError:
            return _short(key) if unicode.is_valid(key) else None
        except json.JSONDecodeError:
            return None
        index = _skip_space(text, index)
        if not text.startswith(",", index):
            return None
        index += 1


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


@overload
def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int: ...


@overload
def query_int(request: Request, name: str, default: None, *, low: int, high: int) -> int | None: ...


def query_int(request: Request, name: str, default: int | None, *, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if len(raw) <= MAX_DIGITS else None
    except ValueError:
        value = None
    if value is None:
        raise BadRequest(f"query parameter {name} must be an integer", field=name)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low} and {high}", field=name)
    return value
