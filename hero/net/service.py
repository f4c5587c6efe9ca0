"""A running overlay: the node, its Mycelium message API on a local port, and the TUN face where possible.

`hero net up` runs one standalone; `hero up` runs one inside the node (the
server composes it with the runtime), where it is the node's `Overlay`
(overlay.py). Settings take Mycelium's flag names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

from hero.errors import NotFound, UsageError
from hero.net.address import Identity, address_of
from hero.net.api import create_api
from hero.net.inbox import InboundMessage
from hero.net.node import OverlayConfig, OverlayNode
from hero.net.overlay import FIND_AGENT_S, Handler, Target, parse_to
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
        self.agents: Any = None  # the AgentBridge when running inside `hero up` (for the status)

    # the Overlay protocol (overlay.py)

    @property
    def public_key(self) -> str:
        return self.node.identity.public.hex()

    def subscribe(self, handler: Handler) -> None:
        self.node.messages.inbox.handlers.append(handler)

    async def target(self, to: str, agent: str | None) -> Target:
        ip, key = parse_to(to, agent)
        router = self.node.router
        if ip is not None:
            pk = router.public_key_of(ipaddress.IPv6Address(ip).packed)
            if pk is None:
                raise NotFound(f"no route to {ip}", field="to")
            return Target(pk.hex(), ip, agent)
        assert key is not None
        if agent is not None or router.public_key_of(address_of(bytes.fromhex(key)).packed) is not None:
            return Target(key, None, agent)  # a node
        host = await self.node.agents.find(bytes.fromhex(key), FIND_AGENT_S)
        if host is None:
            raise NotFound(f"no node or agent with key {key[:16]}… answers on the overlay", field="to")
        return Target(host.hex(), None, key)

    async def send(self, target: Target, topic: bytes, payload: bytes, *, sender: str | None,
                   wait_s: float | None) -> InboundMessage | None:
        node = self.node
        assert target.key is not None
        if target.key == self.public_key:  # to ourselves: one of our agents, or our API's inbox
            message = node.local_message(target.agent, topic, payload, src_agent=sender)
            node.deliver_local(message)
            mid = message.id
        else:
            mid = node.messages.push(bytes.fromhex(target.key), topic, payload,
                                     agent=bytes.fromhex(target.agent) if target.agent else None,
                                     src_agent=bytes.fromhex(sender) if sender else None).id.hex()
        return await node.messages.inbox.wait_reply(mid, wait_s) if wait_s else None

    async def reply(self, message: InboundMessage, payload: bytes, *, sender: str | None) -> None:
        node = self.node
        if message.src_pk == self.public_key:  # our own agent or API asked: no network
            node.deliver_local(node.local_message(message.src_agent, message.topic, payload, src_agent=sender,
                                                  reply_to=message.id))
            return
        node.messages.push(bytes.fromhex(message.src_pk), message.topic, payload, reply_to=message.id,
                           agent=bytes.fromhex(message.src_agent) if message.src_agent else None,
                           src_agent=bytes.fromhex(sender) if sender else None)

    def publish(self, agent_id: str) -> None:
        self.node.agents.publish(bytes.fromhex(agent_id))

    def l3_address(self) -> str | None:
        return str(self.node.identity.address) if self.tun is not None else None

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

    async def status(self) -> dict[str, Any]:
        """What the operator sees: the node, its peers and links, routes, and the TUN face."""
        node = self.node
        return {
            **node.info(),
            "mode": "embedded",
            "listenPort": node.port,
            "apiAddr": f"127.0.0.1:{self.api_port}" if self.api_port else None,
            "tun": {"name": self.tun.name, "rxPackets": self.tun.rx_packets, "txPackets": self.tun.tx_packets,
                    "dropped": self.tun.dropped} if self.tun else {"error": self.tun_error},
            "peers": node.peers_json(),
            "routes": node.router.table(),
            "fallbackRoutes": len(node.router.table(fallback=True)),
            "agentsPublished": len(node.agents.published),
            "agentsUngranted": len(node.agents.ungranted),
            "agentMessages": self.agents.counts() if self.agents else None,
            "agentRecords": len(node.agents.directory),
            "agentQueriesAnswered": node.agents.queries_answered,
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
