"""What the rest of Hero uses of an overlay: the embedded node (service.py) or a Mycelium daemon (external.py).

Both speak Mycelium's message model: a message goes to a node, named by its
public key or overlay address, with an optional topic, and may be answered by
a reply. An agent on a node is named by the topic `hero/agent/<agent id>`, so
any Mycelium client can reach one; the embedded overlay also carries the
target and sending agents' ids in its own wire and finds the node hosting an
agent from the agent id alone (signed records, locator.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hero.errors import BadRequest
from hero.net.address import in_overlay
from hero.net.inbox import InboundMessage

AGENT_TOPIC = b"hero/agent/"
FIND_AGENT_S = 3.0  # how long a send waits for the node hosting an agent it has no record of


def agent_topic(agent_id: str) -> bytes:
    return AGENT_TOPIC + agent_id.encode()


def agent_in_topic(topic: bytes) -> str | None:
    """The agent id a `hero/agent/<id>` topic names (lowercase hex), else None."""
    if not topic.startswith(AGENT_TOPIC) or len(topic) != len(AGENT_TOPIC) + 64:
        return None
    text = topic[len(AGENT_TOPIC) :].decode("ascii", errors="replace").lower()
    return text if all(c in "0123456789abcdef" for c in text) else None


@dataclass(frozen=True)
class Target:
    """A node (by key, or by overlay address when that is all we know) and, optionally, an agent there."""

    key: str | None = None
    ip: str | None = None
    agent: str | None = None


def parse_to(to: str, agent: str | None) -> tuple[str | None, str | None]:
    """(overlay address, public key) from an agent's `to`: one of them, checked; raises BadRequest."""
    if agent is not None and not _is_key(agent):
        raise BadRequest("agent must be a 64-character hex agent id", field="agent")
    if ":" in to:
        try:
            ip = ipaddress.IPv6Address(to)
        except ValueError:
            raise BadRequest(f"{to!r} is not an IPv6 address", field="to") from None
        if not in_overlay(ip):
            raise BadRequest(f"{to} is not an overlay address (400::/7)", field="to")
        return str(ip), None
    if not _is_key(to):
        raise BadRequest("to must be an overlay address or a 64-character hex public key", field="to")
    return None, to.lower()


def _is_key(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


Handler = Callable[[InboundMessage], bool]  # True: taken


class Overlay(Protocol):
    @property
    def public_key(self) -> str:
        """This node's key on the overlay (hex)."""
        ...

    def subscribe(self, handler: Handler) -> None:
        """Offer every whole inbound message to `handler` (before the API's inbox)."""
        ...

    async def target(self, to: str, agent: str | None) -> Target:
        """Where `to` (an overlay address, a node key or an agent id) leads; NotFound if nowhere, BadRequest if
        it is not one of those."""
        ...

    async def send(self, target: Target, topic: bytes, payload: bytes, *, sender: str | None,
                   wait_s: float | None) -> InboundMessage | None:
        """Send (from our agent `sender`); with `wait_s`, the reply if one comes in time."""
        ...

    async def reply(self, message: InboundMessage, payload: bytes, *, sender: str | None) -> None:
        """Answer `message` (from our agent `sender`)."""
        ...

    def publish(self, agent_id: str) -> None:
        """This node hosts `agent_id`: tell the overlay (if it can be told)."""
        ...

    def l3_address(self) -> str | None:
        """The overlay address an interface of this host holds (the TUN's), where the web app can listen."""
        ...

    async def status(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
