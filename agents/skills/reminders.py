"""Reminders: "remind me in 10 minutes to call mum" sets a durable timer.

The timer survives hibernation and restarts; when it fires, the agent is
activated and the reminder arrives in the user's history and live event stream.
"""

from __future__ import annotations

import re

from hero.runtime.agent import AgentContext

UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}
PATTERN = re.compile(
    r"^\s*remind me in (\d+(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hour|day)s?\s+(?:to\s+)?(.+?)\s*$",
    re.IGNORECASE,
)
TIMER = "reminder"


async def handle(ctx: AgentContext, text: str) -> str | None:
    match = PATTERN.match(text)
    if match is None:
        return None
    amount, unit, what = float(match[1]), match[2].lower(), match[3]
    delay_s = amount * UNITS[unit]
    await ctx.set_timer(delay_s, TIMER, {"text": what})
    return f"OK, I will remind you to {what} in {match[1]} {unit}{'s' if amount != 1 else ''}."


def fired_message(payload: dict) -> str:
    return f"⏰ Reminder: {payload.get('text', '')}"
