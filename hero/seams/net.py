"""The net seams: agents send over the overlay (runtime → net), and the operator sees the overlay (web → net)."""

from __future__ import annotations

from typing import Any, Protocol

from hero.runtime.events import OverlayMessage


class Messenger(Protocol):
    async def send(self, sender: str, to: str, payload: bytes, *, agent: str | None = None, topic: bytes = b"",
                   wait_s: float | None = None) -> OverlayMessage | None:
        """Send `payload` over the overlay from agent `sender` to `to` (an overlay address, a node's public key,
        or an agent id, hex), or to agent `agent` on the node `to` names. With `wait_s`, wait that long for the
        answer and return it (None if none came in time); without, return once it is on its way.
        Raises NotFound (nothing answers to `to`), BadRequest (`to` is not an address or key) or Unavailable."""
        ...


class OverlayStatus(Protocol):
    async def status(self) -> dict[str, Any]:
        """The overlay's address, peers, routes, per-link traffic and agent counters, for the operator."""
        ...
