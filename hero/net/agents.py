"""Overlay messages to an agent become events for it; what it answers goes back as a Mycelium reply; agents
send through the same bridge (it is the runtime's `Messenger`).

Agents are isolated by default: a message reaches an agent only if its sender
(the authenticated key of the node it came from) is on that agent's allow-list,
kept in `DATA/overlay-allow.json` (`{"<agent id>": ["<node key hex>" | "*"]}`);
this node's own agents and API may always reach them, and so may the answer to
a message one of them sent (from the node it went to, within `ANSWER_WINDOW_S`:
an agent that asks another node need not allow-list it). The runtime never sees
this module: the server hands it the node's `deliver` and hands the node it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from hero.errors import BadRequest, HeroError, Unavailable
from hero.files import replace_file
from hero.net.inbox import InboundMessage
from hero.net.messages import MAX_MESSAGE_BYTES
from hero.net.overlay import Overlay, agent_in_topic
from hero.nursery import Nursery
from hero.runtime.events import OverlayMessage, Reply

log = logging.getLogger("hero.net")
Deliver = Callable[[str, OverlayMessage], Awaitable[Reply]]
ANSWER_WINDOW_S = 600.0  # how long after an agent sent a message the answer to it is let in
MAX_ASKED = 10_000  # (agent, node it asked) pairs remembered for that


class AllowList:
    """Who may reach which agent. The file is read again when it changes (an operator edits it while the
    node runs), so a new user's entry works at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._allow: dict[str, set[str]] = {}
        self._stamp: tuple[int, int] | None = None
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            self._allow, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            raw = json.loads(self.path.read_text())
            self._allow = {a: {k.lower() for k in keys} for a, keys in raw.items() if isinstance(keys, list)}
        except (OSError, ValueError, AttributeError):
            self._allow = {}
            log.warning("overlay: %s is not valid JSON; every agent is closed until it is fixed", self.path)

    def allows(self, agent_id: str, sender: str) -> bool:
        self._load()
        keys = self._allow.get(agent_id, set())
        return "*" in keys or sender.lower() in keys

    def set(self, agent_id: str, keys: list[str]) -> None:
        self._load()
        self._allow[agent_id] = {k.lower() for k in keys}
        replace_file(self.path, json.dumps({a: sorted(k) for a, k in self._allow.items()}, indent=1).encode())

    def get(self, agent_id: str) -> list[str]:
        self._load()
        return sorted(self._allow.get(agent_id, set()))


class AgentBridge:
    """Overlay messages for this node's agents become their events; agents send through it (the runtime's
    `Messenger`). Built before the overlay starts (the node needs it); `attach` connects it."""

    def __init__(self, allow: AllowList, is_local: Callable[[str], bool],
                 grant_of: Callable[[str], bytes | None] = lambda agent_id: None) -> None:
        self.allow = allow
        self.is_local = is_local  # does this node host that agent (its registry, asked each time)
        self.grant_of = grant_of  # the owner's grant to host it (records.py), from the registry
        self.overlay: Overlay | None = None
        self._deliver: Deliver | None = None
        self._nursery = Nursery("overlay-agents")
        self._asked: OrderedDict[tuple[str, str], float] = OrderedDict()  # (our agent, node key or ip) -> sent at
        self.delivered = 0
        self.refused = 0
        self.sent = 0

    def attach(self, overlay: Overlay, deliver: Deliver) -> None:
        self.overlay = overlay
        self._deliver = deliver
        overlay.subscribe(self._take)

    async def aclose(self) -> None:
        await self._nursery.aclose()

    def counts(self) -> dict[str, int]:
        return {"delivered": self.delivered, "refused": self.refused, "sent": self.sent}

    # inbound

    def _take(self, message: InboundMessage) -> bool:
        agent = message.agent or agent_in_topic(message.topic)
        if agent is None or not self.is_local(agent):
            return False
        assert self.overlay is not None
        local = message.src_pk == self.overlay.public_key
        if not local and not self._answers(agent, message) and not self.allow.allows(agent, message.src_pk):
            self.refused += 1
            log.info("overlay: message for agent %s from %s refused (not on its allow-list)", agent[:12],
                     message.src_pk[:12])
            return True
        event = OverlayMessage(message.id, message.src_pk, message.src_ip, message.topic, bytes(message.payload),
                               src_agent=message.src_agent, reply=message.reply)
        self._nursery.spawn(self._run(agent, event, message), name=f"overlay-event:{agent[:8]}")
        return True

    def _answers(self, agent: str, message: InboundMessage) -> bool:
        """Whether `message` is an answer to `agent`, from a node `agent` sent to lately."""
        if not message.reply:
            return False
        now = time.monotonic()
        return any(now - self._asked.get((agent, where), -ANSWER_WINDOW_S) < ANSWER_WINDOW_S
                   for where in (message.src_pk.lower(), message.src_ip))

    async def _run(self, agent_id: str, event: OverlayMessage, message: InboundMessage) -> None:
        assert self._deliver is not None and self.overlay is not None
        try:
            reply = await self._deliver(agent_id, event)
            text = await reply.text()
        except HeroError as exc:
            log.warning("overlay: agent %s could not take a message: %s", agent_id[:12], exc.message)
            return
        self.delivered += 1
        if text and not event.reply:
            await self.overlay.reply(message, text.encode(), sender=agent_id)

    # outbound: the runtime's Messenger

    async def send(self, sender: str, to: str, payload: bytes, *, agent: str | None = None, topic: bytes = b"",
                   wait_s: float | None = None) -> OverlayMessage | None:
        if self.overlay is None:
            raise Unavailable("the overlay is not running: agents cannot send")
        if len(payload) > MAX_MESSAGE_BYTES:
            raise BadRequest(f"a message is at most {MAX_MESSAGE_BYTES} bytes", field="payload")
        target = await self.overlay.target(to, agent)
        where = target.key.lower() if target.key else target.ip
        if where is not None:
            self._asked[(sender, where)] = time.monotonic()
            self._asked.move_to_end((sender, where))
            while len(self._asked) > MAX_ASKED:
                self._asked.popitem(last=False)
        answer = await self.overlay.send(target, topic, payload, sender=sender, wait_s=wait_s)
        self.sent += 1
        if answer is None:
            return None
        return OverlayMessage(answer.id, answer.src_pk, answer.src_ip, answer.topic, bytes(answer.payload),
                              src_agent=answer.src_agent, reply=True)
