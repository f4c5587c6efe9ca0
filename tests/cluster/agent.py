"""The agent the Ray cluster tests run on every node: it answers at once and deterministically (the cluster, not
the model, is under test), and sets a durable timer when asked ('timer <seconds> <name>')."""

from __future__ import annotations

from hero.chat.agent import ChatAgent
from hero.runtime.events import ChatMessage, Event, Reply, TimerFired


class Echo(ChatAgent):
    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage):
            self.history.add("user", event.text)
            await self.ctx.persist()
            reply.accept()
            if event.text.startswith("timer "):
                _, delay_s, name = event.text.split()
                await self.ctx.set_timer(float(delay_s), name)
            reply.write(f"echo {event.text}")
            self.history.add("assistant", f"echo {event.text}")
            await self.ctx.persist()
        elif isinstance(event, TimerFired):
            self.history.add("assistant", f"timer {event.name}", kind="reminder")
            await self.ctx.persist()
