"""Energy: "how much energy do you use?" (or `/energy`) tells the user their agent's watts and Wh today, from the
node's power part, beside the node's average agent."""

from __future__ import annotations

import re
from typing import Any

from hero.skills import SkillContext, command, on_message, tool

PHRASE = re.compile(r"\b(how much|what).*\b(energy|power|watts?|electricity)\b.*\b(you|use|using|draw)", re.IGNORECASE)


@tool
async def energy(ctx: SkillContext) -> dict[str, Any]:
    """This agent's power: watts now (a mean over the node's window), Wh today, and the node's average agent."""
    report = ctx.power()
    if report is None:
        return {"error": "this node meters no power"}
    average = report.get("node_average", {})
    return {
        "watts": round(float(report.get("watts", 0.0)), 4),
        "wh_today": round(float(report.get("wh_today", 0.0)), 5),
        "window_s": report.get("window_s"),
        "node_average_watts": round(float(average.get("watts", 0.0)), 4),
        "node_average_wh_today": round(float(average.get("wh_today", 0.0)), 5),
        "source": report.get("source"),
    }


def say(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return f"I cannot tell: {figures['error']}."
    return (f"I draw {figures['watts']:.3f} W now (over the last {figures['window_s']:g} s) and have used "
            f"{figures['wh_today']:.4f} Wh today; the node's average agent draws {figures['node_average_watts']:.3f} W "
            f"({figures['source']}).")


@command("energy", usage="/energy")
async def energy_command(ctx: SkillContext, text: str) -> str:
    return say(await energy(ctx))


@on_message
async def phrase(ctx: SkillContext, text: str) -> str | None:
    return say(await energy(ctx)) if PHRASE.search(text) else None
