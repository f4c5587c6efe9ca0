"""What a skill's module is made of: decorated functions the loader collects.

```python
from hero.skills import SkillContext, command, on_message, tool

@tool
async def search(ctx: SkillContext, query: str, limit: int = 5) -> list[str]:
    \"\"\"Find notes with these words.

    Args:
        query: the words to look for
        limit: how many notes at most
    \"\"\"
```

A **tool** is offered to the model (grammar-constrained JSON), to `/call`, and to the
owner's MCP clients; its JSON schema comes from its type hints and docstring. A
**command** answers a slash command (`/note buy milk`) with the text after it. An
**on_message** handler may answer a chat message before the model sees it (the
phrasings a skill understands), **on_timer** gets the timers the skill set,
**on_overlay** the overlay messages of its topic, and **prompt** adds a line to
the model's system prompt. A function may be async or plain; either runs in a skill
worker (`runner.py`), never on the node's event loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__hero_skill__"


@dataclass(frozen=True)
class Mark:
    kind: str  # "tool" | "command" | "message" | "timer" | "overlay" | "prompt"
    name: str = ""  # tool or command name, overlay topic
    usage: str = ""  # a command's usage line
    description: str = ""


def _mark(fn: F, mark: Mark) -> F:
    if not callable(fn):
        raise TypeError(f"@{mark.kind} decorates a function, not {type(fn).__name__}")
    setattr(fn, MARK, mark)
    return fn


def tool(fn: F | None = None, *, name: str | None = None, description: str | None = None) -> Any:
    """A tool the agent (and the owner's MCP clients) may call; `ctx` first, then JSON-typed arguments."""
    def wrap(f: F) -> F:
        return _mark(f, Mark("tool", name or f.__name__, description=description or ""))
    return wrap(fn) if fn is not None else wrap


def command(name: str, usage: str = "") -> Callable[[F], F]:
    """Answers `/name TEXT`: called as `fn(ctx, text)` and returns the reply."""
    return lambda f: _mark(f, Mark("command", name, usage or f"/{name}"))


def on_message(fn: F) -> F:
    """Called as `fn(ctx, text)` for each chat message, before the model; return a reply to answer it, else None."""
    return _mark(fn, Mark("message"))


def on_timer(fn: F) -> F:
    """Called as `fn(ctx, payload)` when a timer this skill set comes due (`payload["timer_id"]` says which);
    returns what to tell the user, or None."""
    return _mark(fn, Mark("timer"))


def on_overlay(topic: str) -> Callable[[F], F]:
    """Called as `fn(ctx, message)` for overlay messages with this topic; what it returns is sent back."""
    return lambda f: _mark(f, Mark("overlay", topic))


def prompt(fn: F) -> F:
    """Called as `fn(ctx)`, or `fn(ctx, text)` with the message the model is to answer, when the model is asked;
    returns a line for its system prompt (keep it short: at most 2,000 characters are used), or None."""
    return _mark(fn, Mark("prompt"))


def marks(module: object) -> list[tuple[Mark, Callable[..., Any]]]:
    """The decorated functions of a skill's module, in the order they are written."""
    found = []
    for value in vars(module).values():
        mark = getattr(value, MARK, None)
        if isinstance(mark, Mark) and callable(value):
            found.append((mark, value))
    return sorted(found, key=lambda item: _line(item[1]))


def _line(fn: Callable[..., Any]) -> int:
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return code.co_firstlineno if code is not None else 0
