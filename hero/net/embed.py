"""The overlay inside `hero up`: the node's own (its X25519 key, its users' agents published), or a Mycelium
daemon's (`overlay = "external"`); either way overlay messages become agent events and agents send.

Called by the server (the composition root). A busy port, an unreachable daemon or a missing TUN costs only
the overlay (or only the TUN): the node serves HTTP either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import nacl.signing

from hero.config import NodeConfig
from hero.errors import UsageError
from hero.identity import NodeKeys
from hero.net.address import Identity, load_or_create_key
from hero.net.agents import AgentBridge, Deliver
from hero.net.external import ExternalOverlay
from hero.net.overlay import Overlay
from hero.net.records import HostAuthority
from hero.net.service import OverlayService, OverlaySettings

log = logging.getLogger("hero.net")


async def start_overlay(config: NodeConfig, keys: NodeKeys, bridge: AgentBridge, deliver: Deliver,
                        agents: Iterable[str], *, authority: nacl.signing.SigningKey | None = None) -> Overlay | None:
    """Start the configured overlay, connect `bridge` to it and publish `agents` (None: no overlay runs).

    Records of the node's agents are vouched for by `authority` (the cluster's key; default the node's own
    signing key), which their owners' grants name (`bridge.grant_of`)."""
    if config.overlay == "off":
        return None
    overlay: OverlayService | ExternalOverlay
    if config.overlay == "external":
        overlay = ExternalOverlay(config.overlay_daemon)
    else:
        identity = (load_or_create_key(Path(config.overlay_key_file)) if config.overlay_key_file
                    else Identity(bytes(keys.overlay)))
        overlay = OverlayService(identity, OverlaySettings(
            peers=tuple(config.overlay_peers.split()),
            tcp_listen_port=config.overlay_port,
            api_addr=config.overlay_api or None,
            tun=config.overlay_tun != "off",
            tun_name=config.overlay_tun_name,
            tun_mtu=config.overlay_tun_mtu,
            hello_interval_s=config.overlay_hello_interval_s,
            dead_after_s=3 * config.overlay_hello_interval_s,
        ))
        overlay.agents = bridge
        locator = overlay.node.agents
        locator.is_local = lambda agent: bridge.is_local(agent.hex())
        locator.authority = HostAuthority(authority or keys.signing)
        locator.grant_of = lambda agent: bridge.grant_of(agent.hex())
    try:
        await overlay.start()
    except (UsageError, OSError) as exc:
        log.warning("overlay: not started (%s); the node serves without it", getattr(exc, "message", exc))
        await overlay.aclose()
        return None
    bridge.attach(overlay, deliver)
    for agent_id in agents:
        overlay.publish(agent_id)
    return overlay
