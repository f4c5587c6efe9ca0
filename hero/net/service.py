"""A running overlay: the node, its Mycelium message API on a local port, and the TUN face where possible.

`hero net up` runs one standalone; `hero up` runs one inside the node (the
server composes it with the runtime). Settings take Mycelium's flag names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

from hero.errors import UsageError
from hero.net.address import Identity
from hero.net.api import create_api
from hero.net.node import OverlayConfig, OverlayNode
from hero.net.tun import MTU, Tun, TunUnavailable

log = logging.getLogger("hero.net")


def parse_host_port(text: str, *, field: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{field} must be HOST:PORT, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class OverlaySettings:
    peers: tuple[str, ...] = ()
    tcp_listen_port: int = 9651
    listen_host: str = "0.0.0.0"
    api_addr: str | None = "127.0.0.1:8989"
    tun: bool = True
    tun_name: str = "hero0"
    tun_mtu: int = MTU
    hello_interval_s: float = 0.5
    dead_after_s: float = 1.5


class OverlayService:
    def __init__(self, identity: Identity, settings: OverlaySettings) -> None:
        self.settings = settings
        self.node = OverlayNode(identity, OverlayConfig(
            listen_host=settings.listen_host, tcp_listen_port=settings.tcp_listen_port, peers=settings.peers,
            hello_interval_s=settings.hello_interval_s, dead_after_s=settings.dead_after_s,
        ))
        self.tun: Tun | None = None
        self.tun_error: str | None = None
        self.api_port: int | None = None
        self._api: uvicorn.Server | None = None
        self._api_task: asyncio.Task[Any] | None = None
        self.inbox: Any = None  # the AgentInbox when running inside `hero up`

    async def start(self) -> None:
        sock = None
        if self.settings.api_addr:
            host, port = parse_host_port(self.settings.api_addr, field="--api-addr")
            if not ipaddress.ip_address(host if host != "localhost" else "127.0.0.1").is_loopback:
                raise UsageError("--api-addr must be a loopback address: the Mycelium API has no authentication")
            sock = _bind(host, port)
            self.api_port = sock.getsockname()[1]
        try:
            await self.node.start()
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise UsageError(f"cannot listen on tcp port {self.settings.tcp_listen_port}: {exc.strerror}") from None
        if sock is not None:
            self._api = uvicorn.Server(uvicorn.Config(create_api(self.node), log_level="warning", lifespan="off"))
            self._api_task = self.node.nursery.spawn(self._api.serve(sockets=[sock]), name="overlay-api")
        if self.settings.tun:
            try:
                self.tun = await Tun.open(self.settings.tun_name, str(self.node.identity.address),
                                          mtu=self.settings.tun_mtu)
            except TunUnavailable as exc:
                self.tun_error = str(exc)
                log.warning("overlay: no TUN device (%s); running the message overlay only", exc)
            else:
                self.node.tun_write = self.tun.write
                self.tun.start(self.node.send_ipv6)

    async def aclose(self) -> None:
        if self._api is not None:
            self._api.should_exit = True
            if self._api_task is not None:
                await asyncio.wait([self._api_task], timeout=5)
        if self.tun is not None:
            self.node.tun_write = None
            self.tun.close()
        await self.node.aclose()

    def status(self) -> dict[str, Any]:
        """What the operator sees: the node, its peers and links, routes, and the TUN face."""
        node = self.node
        return {
            **node.info(),
            "listenPort": node.port,
            "apiAddr": f"127.0.0.1:{self.api_port}" if self.api_port else None,
            "tun": {"name": self.tun.name, "rxPackets": self.tun.rx_packets, "txPackets": self.tun.tx_packets,
                    "dropped": self.tun.dropped} if self.tun else {"error": self.tun_error},
            "peers": node.peers_json(),
            "routes": node.router.table(),
            "fallbackRoutes": len(node.router.table(fallback=True)),
            "agentsPublished": len(node._own_agents),
            "agentMessages": {"delivered": self.inbox.delivered, "refused": self.inbox.refused} if self.inbox else None,
            "agentRecords": len(node.directory),
            "counters": {k: v for k, v in vars(node.counters).items() if isinstance(v, int)},
            "sessions": vars(node.sessions.stats),
            "messages": vars(node.messages.stats),
            "inbox": {"waiting": len(node.messages.inbox), "dropped": node.messages.inbox.dropped},
            "routing": vars(node.router.stats),
        }


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
