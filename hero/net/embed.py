"""The overlay node inside `hero up`: the node's own X25519 key, its users' agents published, messages as events.

Called by the server (the composition root); a busy port or a missing TUN
costs only the overlay (or only the TUN): the node serves HTTP either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hero.config import NodeConfig
from hero.errors import UsageError
from hero.identity import NodeKeys
from hero.net.address import Identity
from hero.net.agents import AgentInbox, AllowList, Deliver
from hero.net.service import OverlayService, OverlaySettings

log = logging.getLogger("hero.net")


async def start_overlay(config: NodeConfig, keys: NodeKeys, agents: Iterable[str],
                        deliver: Deliver) -> OverlayService | None:
    if config.overlay == "off":
        return None
    settings = OverlaySettings(
        peers=tuple(config.overlay_peers.split()),
        tcp_listen_port=config.overlay_port,
        api_addr=config.overlay_api or None,
        tun=config.overlay_tun != "off",
    )
    service = OverlayService(Identity(bytes(keys.overlay)), settings)
    try:
        await service.start()
    except (UsageError, OSError) as exc:
        log.warning("overlay: not started (%s); the node serves without it", getattr(exc, "message", exc))
        await service.aclose()
        return None
    service.inbox = AgentInbox(service.node, deliver, AllowList(config.data_dir / "overlay-allow.json"))
    for agent_id in agents:
        service.node.publish_agent(agent_id)
    return service
