"""Ask another agent: `/ask AGENT_ID question` sends the question to that agent (over the overlay; on one node
it stays on the node). Its owner decides who may ask: `/ask allow AGENT_ID` (and `/ask deny`, `/ask allowed`).
An allowed question is answered by the model from the question alone (never from the owner's notes or history);
any other is refused with a one-line reason. The answer comes back later, as a message to the asker.
"""

from __future__ import annotations

import re

from hero.runtime.events import OverlayMessage
from hero.skills import SkillContext, command, on_message, on_overlay, tool

TOPIC = "hero/ask"
AGENT = re.compile(r"^[0-9a-f]{64}$")
PHRASE = re.compile(r"^\s*ask (?:agent )?([0-9a-f]{64})[\s:,]+(.+?)\s*$", re.IGNORECASE)
USAGE = "/ask AGENT_ID QUESTION | /ask allow AGENT_ID | /ask deny AGENT_ID | /ask allowed"
ANSWER_SYSTEM = "You answer a question another person's assistant asks. Answer briefly; you know nothing private."
MAX_QUESTION = 2000


def _allowed(ctx: SkillContext) -> list[str]:
    allowed: list[str] = ctx.state.setdefault("allowed", [])
    return allowed


@tool
async def ask_agent(ctx: SkillContext, agent_id: str, question: str) -> str:
    """Send a question to another user's agent; its answer arrives later as a message.

    Args:
        agent_id: the other agent's id (64 hex digits)
        question: what to ask
    """
    agent_id = agent_id.strip().lower()
    if not AGENT.match(agent_id):
        return f"{agent_id!r} is not an agent id (64 hex digits)."
    if agent_id == ctx.agent_id:
        return "That is me."
    await ctx.send(agent_id, question[:MAX_QUESTION], topic=TOPIC.encode())
    return f"Asked agent {agent_id[:12]}…; its answer will come as a message."


@tool
async def allow(ctx: SkillContext, agent_id: str) -> str:
    """Let another agent ask this one questions.

    Args:
        agent_id: the agent to allow (64 hex digits)
    """
    agent_id = agent_id.strip().lower()
    if not AGENT.match(agent_id):
        return f"{agent_id!r} is not an agent id (64 hex digits)."
    if agent_id not in _allowed(ctx):
        _allowed(ctx).append(agent_id)
    return f"Agent {agent_id[:12]}… may now ask me questions."


@command("ask", usage=USAGE)
async def ask_command(ctx: SkillContext, text: str) -> str:
    words = text.split(maxsplit=1)
    if not words:
        return USAGE
    if words[0] == "allow" and len(words) == 2:
        return await allow(ctx, words[1])
    if words[0] == "deny" and len(words) == 2:
        agent_id = words[1].strip().lower()
        if agent_id in _allowed(ctx):
            _allowed(ctx).remove(agent_id)
        return f"Agent {agent_id[:12]}… may no longer ask me questions."
    if words[0] == "allowed":
        return "\n".join(_allowed(ctx)) or "Nobody may ask me questions yet."
    if len(words) == 2:
        return await ask_agent(ctx, words[0], words[1])
    return USAGE


@on_message
async def phrase(ctx: SkillContext, text: str) -> str | None:
    match = PHRASE.match(text)
    return await ask_agent(ctx, match[1].lower(), match[2]) if match else None


@on_overlay(TOPIC)
async def question_or_answer(ctx: SkillContext, message: OverlayMessage) -> str:
    """A question from another agent (answered if its owner allowed it), or the answer to one this agent asked."""
    sender = message.src_agent or ""
    if message.reply:
        return f"Answer from agent {sender[:12] or message.src_pk[:12]}…: {message.text}"
    if sender not in _allowed(ctx):
        return (f"I may not answer agent {sender[:12] or 'unknown'}…: my owner has not allowed it to ask "
                "(/ask allow AGENT_ID).")
    answer = await ctx.ask_llm([{"role": "system", "content": ANSWER_SYSTEM},
                                {"role": "user", "content": message.text[:MAX_QUESTION]}], max_tokens=96)
    return answer or "I have no answer to that."
