"""Memory: "remember that ..." stores a fact the agent keeps in every prompt; "forget everything" clears them."""

from __future__ import annotations

import re

from hero.runtime.agent import AgentContext

REMEMBER = re.compile(r"^\s*remember(?: that)?\s+(.+?)\s*$", re.IGNORECASE)
FORGET = re.compile(r"^\s*forget everything\s*$", re.IGNORECASE)
MAX_FACTS = 50


async def handle(ctx: AgentContext, text: str) -> str | None:
    facts: list[str] = ctx.state.setdefault("memory", {}).setdefault("facts", [])
    if FORGET.match(text):
        facts.clear()
        return "Done: I have forgotten everything you asked me to remember."
    match = REMEMBER.match(text)
    if match is None:
        return None
    facts.append(match[1])
    del facts[:-MAX_FACTS]
    return f"I will remember that {match[1]}."


def facts(ctx: AgentContext) -> list[str]:
    return list(ctx.state.get("memory", {}).get("facts", []))
