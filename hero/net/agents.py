"""Overlay messages to an agent become events for it; what it answers goes back as a Mycelium reply.

Agents are isolated by default: a message reaches an agent only if its sender
(the authenticated key of the node it came from) is on that agent's allow-list,
kept in `DATA/overlay-allow.json` (`{"<agent id>": ["<node key hex>" | "*"]}`).
The runtime never sees this module: the server hands it a `deliver` callable.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from hero.errors import HeroError
from hero.net.inbox import InboundMessage
from hero.net.node import OverlayNode
from hero.runtime.events import OverlayMessage, Reply

log = logging.getLogger("hero.net")
Deliver = Callable[[str, OverlayMessage], Awaitable[Reply]]


class AllowList:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._allow: dict[str, set[str]] = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
                self._allow = {a: {k.lower() for k in keys} for a, keys in raw.items() if isinstance(keys, list)}
            except (ValueError, AttributeError):
                log.warning("overlay: %s is not valid JSON; every agent is closed until it is fixed", path)

    def allows(self, agent_id: str, sender: str) -> bool:
        keys = self._allow.get(agent_id, set())
        return "*" in keys or sender.lower() in keys

    def set(self, agent_id: str, keys: list[str]) -> None:
        self._allow[agent_id] = {k.lower() for k in keys}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({a: sorted(k) for a, k in self._allow.items()}, indent=1))
        os.replace(tmp, self.path)

    def get(self, agent_id: str) -> list[str]:
        return sorted(self._allow.get(agent_id, set()))


class AgentInbox:
    def __init__(self, node: OverlayNode, deliver: Deliver, allow: AllowList) -> None:
        self.node = node
        self._deliver = deliver
        self.allow = allow
        self.delivered = 0
        self.refused = 0
        node.messages.inbox.handlers.append(self._take)

    def _take(self, message: InboundMessage) -> bool:
        if message.agent is None or not self.node.hosts_agent(message.agent):
            return False
        if message.src_pk != self.node.identity.public.hex() and not self.allow.allows(message.agent,
                                                                                      message.src_pk):
            self.refused += 1
            log.info("overlay: message for agent %s from %s refused (not on its allow-list)",
                     message.agent[:12], message.src_pk[:12])
            return True
        event = OverlayMessage(message.id, message.src_pk, message.src_ip, message.topic, bytes(message.payload))
        self.node.nursery.spawn(self._run(message.agent, event), name=f"overlay-event:{message.agent[:8]}")
        return True

    async def _run(self, agent_id: str, event: OverlayMessage) -> None:
        try:
            reply = await self._deliver(agent_id, event)
            text = await reply.text()
        except HeroError as exc:
            log.warning("overlay: agent %s could not take a message: %s", agent_id[:12], exc.message)
            return
        self.delivered += 1
        sender = bytes.fromhex(event.src_pk)
        if text and sender != self.node.identity.public:
            self.node.messages.push(sender, event.topic, text.encode(), reply_to=event.message_id)
