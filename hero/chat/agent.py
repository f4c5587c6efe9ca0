"""A chat agent: an agent that keeps a chat history with its user (what `/api/me/messages` shows)."""

from __future__ import annotations

from hero.chat.history import ChatHistory
from hero.runtime.agent import Agent, AgentContext


class ChatAgent(Agent):
    """Base class of agents that chat. `self.history` is the agent's history; the runtime's failure
    notices (a turn that raised, a timer set aside) become one `error` entry each, so the user's view
    stays honest."""

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.history = ChatHistory(ctx.state, ctx.publish, ctx.seal, ctx.load, ctx.agent_id)

    async def on_activate(self) -> None:
        await self.history.warm()

    def on_failure(self, notice: str) -> None:
        self.history.add("assistant", notice, kind="error")
