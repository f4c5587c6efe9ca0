"""Reminders: "remind me in 10 minutes to stretch" (or `/remind in 10m stretch`) sets a durable timer.

The timer survives hibernation and restarts; when it fires the agent is
activated and the reminder arrives as a message. Pending reminders are kept in
the skill's state so they can be listed and cancelled.
"""

from __future__ import annotations

import re
import time
from typing import Any

from hero.skills import SkillContext, command, on_message, on_timer, tool

UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600,
         "d": 86400, "day": 86400}
PHRASE = re.compile(
    r"^\s*remind me in (\d+(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hr|hour|d|day)s?\s+(?:to\s+)?(.+?)\s*$",
    re.IGNORECASE,
)
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hr|hour|d|day)s?\b", re.IGNORECASE)
MAX_PENDING = 100
MAX_DELAY_S = 366 * 86400
USAGE = "/remind in 10m stretch | /remind list | /remind cancel N"


def _pending(ctx: SkillContext) -> dict[str, Any]:
    pending: dict[str, Any] = ctx.state.setdefault("pending", {})
    return pending


async def _set(ctx: SkillContext, delay_s: float, text: str) -> str:
    if not 0 < delay_s <= MAX_DELAY_S:
        raise ValueError("a reminder is from 1 second to a year away")
    pending = _pending(ctx)
    if len(pending) >= MAX_PENDING:
        raise ValueError(f"at most {MAX_PENDING} reminders may be pending; cancel one first")
    timer_id = await ctx.set_timer(delay_s, {"text": text})
    pending[timer_id] = {"text": text, "due": time.time() + delay_s}
    return timer_id


@on_message
async def phrase(ctx: SkillContext, text: str) -> str | None:
    match = PHRASE.match(text)
    if match is None:
        return None
    amount, unit, what = float(match[1]), match[2].lower(), match[3]
    await _set(ctx, amount * UNITS[unit], what)
    return f"OK, I will remind you to {what} in {match[1]} {unit}{'s' if amount != 1 else ''}."


@command("remind", usage=USAGE)
async def remind_command(ctx: SkillContext, text: str) -> str:
    words = text.split()
    if not words or words[0] == "list":
        return _listing(ctx)
    if words[0] == "cancel" and len(words) == 2 and words[1].isdigit():
        return await cancel(ctx, int(words[1]))
    rest = text[2:].strip() if words[0] == "in" else text
    delay_s, what = 0.0, rest
    while (match := DURATION.match(what)) is not None:
        delay_s += float(match[1]) * UNITS[match[2].lower()]
        what = what[match.end():].strip()
    what = re.sub(r"^to\s+", "", what)
    if delay_s <= 0 or not what:
        return f"Say when and what: {USAGE}"
    await _set(ctx, delay_s, what)
    return f"OK, I will remind you to {what} in {_span(delay_s)}."


@tool
async def remind(ctx: SkillContext, text: str, in_minutes: float) -> str:
    """Set a reminder that arrives as a message later.

    Args:
        text: what to remind the user of
        in_minutes: how many minutes from now
    """
    await _set(ctx, in_minutes * 60, text)
    return f"OK, I will remind you to {text} in {_span(in_minutes * 60)}."


@tool
async def list_reminders(ctx: SkillContext) -> list[str]:
    """The pending reminders, soonest first, numbered."""
    return [f"{n}. {item['text']} (in {_span(item['due'] - time.time())})" for n, item in enumerate(_sorted(ctx), 1)]


@tool
async def cancel(ctx: SkillContext, number: int) -> str:
    """Cancel a pending reminder.

    Args:
        number: its number in the list of reminders
    """
    items = _sorted_ids(ctx)
    if not 1 <= number <= len(items):
        return f"There is no reminder {number}; you have {len(items)}."
    timer_id = items[number - 1]
    await ctx.cancel_timer(timer_id)
    item = _pending(ctx).pop(timer_id)
    return f"Cancelled: {item['text']}."


@on_timer
async def fired(ctx: SkillContext, payload: dict[str, Any]) -> str:
    _pending(ctx).pop(str(payload.get("timer_id")), None)
    return f"⏰ Reminder: {payload.get('text', '')}"


def _listing(ctx: SkillContext) -> str:
    items = _sorted(ctx)
    if not items:
        return "No reminders pending."
    return "\n".join(f"{n}. {item['text']} (in {_span(item['due'] - time.time())})" for n, item in enumerate(items, 1))


def _sorted_ids(ctx: SkillContext) -> list[str]:
    pending = _pending(ctx)
    return sorted(pending, key=lambda k: pending[k]["due"])


def _sorted(ctx: SkillContext) -> list[dict[str, Any]]:
    pending = _pending(ctx)
    return [pending[k] for k in _sorted_ids(ctx)]


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size, 1)
            return f"{n:g} {unit}{'s' if n != 1 else ''}"
    return f"{round(seconds):d} seconds"
