"""An overlay node: links, router, end-to-end sessions, messages, agent records and (optionally) a TUN face.

Data path: a packet from a link is either for our /64 (opened by `Sessions`,
then a message frame or an IPv6 packet for the TUN) or forwarded to the
selected next hop with its hop limit decremented. Every task lives in the
node's nursery; the router's timers are one `call_at` for its next deadline.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hero.identity import overlay_address
from hero.net.address import Identity
from hero.net.handshake import HandshakeError
from hero.net.inbox import InboundMessage
from hero.net.link import Link, LinkProtocol, handshake
from hero.net.locator import RECORD_TTL_S, AgentLocator
from hero.net.messages import MessageService
from hero.net.peers import Dialer, Endpoint
from hero.net.routes import RouterConfig
from hero.net.routing import Router
from hero.net.session import KIND_IPV6, KIND_MESSAGE, Sessions
from hero.net.wire import (
    AgentQuery,
    AgentRecordTlv,
    DataPacket,
    Tlv,
    WireError,
    decode_packet,
    encode_control,
    encode_data,
)
from hero.nursery import Nursery

log = logging.getLogger("hero.net")
STATIC_COST_TCP = 10
MAX_CONTROL_BYTES = 60_000


@dataclass(frozen=True)
class OverlayConfig:
    listen_host: str = "0.0.0.0"
    tcp_listen_port: int = 9651  # 0: pick a free port
    peers: tuple[str, ...] = ()
    hello_interval_s: float = 0.5
    dead_after_s: float = 1.5
    update_interval_s: float = 60.0
    post_quantum: bool = True
    blocked_keys: tuple[str, ...] = ()
    control_rate: float = 2000.0  # control packets per second a neighbour may send
    handshakes_per_ip_s: float = 20.0


@dataclass
class NodeCounters:
    forwarded: int = 0
    delivered: int = 0
    no_route: int = 0
    hop_limit: int = 0
    bad_packets: int = 0
    spoofed: int = 0
    handshakes_failed: int = 0
    blocked: int = 0
    rate_limited: int = 0
    by_source: dict[str, list[int]] = field(default_factory=dict)
    by_destination: dict[str, list[int]] = field(default_factory=dict)


class _InboundProtocol(LinkProtocol):
    """A connection that came in: its handshake runs in the node's nursery (refused at once while it stops)."""

    def __init__(self, node: OverlayNode) -> None:
        super().__init__()
        self._node = node

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._node._closing:
            transport.close()
            return
        self._node.nursery.spawn(self._node._serve_inbound(self), name="overlay-accept")


class OverlayNode:
    def __init__(self, identity: Identity, config: OverlayConfig | None = None) -> None:
        self.identity = identity
        self.config = config or OverlayConfig()
        self.addr = identity.address.packed
        self.own8 = self.addr[:8]
        self.nursery = Nursery("overlay")
        self.counters = NodeCounters()
        self.links: set[Link] = set()
        self.started = time.time()
        self.port = 0
        cfg = self.config
        self.router = Router(
            identity, self._send_control, self._peer_dead,
            config=RouterConfig(hello_interval_s=cfg.hello_interval_s, dead_after_s=cfg.dead_after_s,
                                update_interval_s=cfg.update_interval_s),
            now=time.monotonic(),
        )
        self.sessions = Sessions(identity, self.send_sealed, self._deliver)
        self.messages = MessageService(self._send_message_frame, self.nursery, local_pk=identity.public,
                                       local_ip=str(identity.address), ip_of=lambda pk: str(overlay_address(pk)))
        self.agents = AgentLocator(identity, self._flood)
        self.dialer = Dialer(self._dial, self.nursery)
        self.tun_write: Callable[[bytes | memoryview], None] | None = None
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._record_timer: asyncio.TimerHandle | None = None
        self._accepts: dict[str, list[float]] = {}
        self._closing = False

    # lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.router.tick(loop.time())
        self._server = await loop.create_server(lambda: _InboundProtocol(self), self.config.listen_host,
                                                self.config.tcp_listen_port)
        self.port = self._server.sockets[0].getsockname()[1]
        for text in self.config.peers:
            self.dialer.add(Endpoint.parse(text, field="peers"))
        self._arm()
        self._record_timer = loop.call_later(RECORD_TTL_S / 3, self._refresh_records)

    async def aclose(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._record_timer is not None:
            self._record_timer.cancel()
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.close()
        await self.nursery.aclose()
        if self._server is not None:
            await self._server.wait_closed()

    # links

    async def _dial(self, endpoint: Endpoint) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(loop.create_connection(LinkProtocol, endpoint.host, endpoint.port), 5.0)
        try:
            link = await self._establish(protocol, str(endpoint), inbound=False)
        except HandshakeError:
            if protocol.transport is not None:
                protocol.transport.close()
            raise
        return link.closed

    def _admit_ip(self, ip: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._accepts.get(ip, []) if now - t < 1.0]
        if len(recent) >= self.config.handshakes_per_ip_s:
            self._accepts[ip] = recent
            return False
        recent.append(now)
        self._accepts[ip] = recent
        if len(self._accepts) > 4096:
            self._accepts = {k: v for k, v in self._accepts.items() if v and now - v[-1] < 1.0}
        return True

    async def _serve_inbound(self, protocol: LinkProtocol) -> None:
        transport = protocol.transport
        assert transport is not None
        peer = transport.get_extra_info("peername") or ("?", 0)
        if not self._admit_ip(str(peer[0])):
            self.counters.rate_limited += 1
            transport.close()
            return
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        try:
            await self._establish(protocol, f"tcp://{host}:{peer[1]}", inbound=True)
        except HandshakeError as exc:
            log.debug("inbound handshake from %s failed: %s", peer, exc)
            transport.close()

    async def _establish(self, protocol: LinkProtocol, endpoint: str, *, inbound: bool) -> Link:
        try:
            send, receive, remote = await handshake(
                protocol, self.identity, initiator=not inbound,
                pattern="XXhfs" if self.config.post_quantum else "XX",
            )
        except HandshakeError:
            self.counters.handshakes_failed += 1
            raise
        if remote == self.identity.public or remote.hex() in self.config.blocked_keys:
            self.counters.blocked += 1
            raise HandshakeError("peer key is blocked (or is our own)")
        link = Link(protocol, send, receive, remote, endpoint=endpoint, inbound=inbound,
                    control_rate=self.config.control_rate)
        self.links.add(link)
        self.router.add_peer(link, STATIC_COST_TCP, asyncio.get_running_loop().time())
        records = [AgentRecordTlv(r.encode()) for r in self.agents.directory.records()]
        if records:
            self._send_control(link, records)
        link.start(self._on_packet)
        self.nursery.spawn(self._run_link(link), name=f"link:{endpoint}")
        self._arm()
        return link

    async def _run_link(self, link: Link) -> None:
        try:
            await link.closed
        finally:
            self.links.discard(link)
            self.router.remove_peer(link, asyncio.get_running_loop().time())
            self._arm()

    def _peer_dead(self, peer: object) -> None:
        if isinstance(peer, Link):
            log.info("overlay peer %s stopped answering hellos; closing the link", peer)
            peer.close()

    # router plumbing

    def _send_control(self, peer: object, tlvs: Sequence[Tlv]) -> None:
        assert isinstance(peer, Link)
        batch: list[Tlv] = []
        size = 0
        for tlv in tlvs:
            n = 2 + (len(tlv.raw) if isinstance(tlv, AgentRecordTlv) else 130)
            if batch and size + n > MAX_CONTROL_BYTES:
                peer.send(encode_control(batch))
                batch, size = [], 0
            batch.append(tlv)
            size += n
        if batch:
            peer.send(encode_control(batch))

    def _arm(self) -> None:
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        deadline = self.router.next_deadline()
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.router.tick(asyncio.get_running_loop().time())
        self._arm()

    # packets

    def _on_packet(self, link: Link, raw: bytes, sealed: bytes) -> None:
        try:
            packet = decode_packet(raw, sealed)
        except WireError:
            link.stats.dropped += 1
            self.counters.bad_packets += 1
            return
        if isinstance(packet, DataPacket):
            self._on_data(link, packet)
            return
        if not link.bucket.take():
            link.stats.rate_limited += 1
            self.counters.rate_limited += 1
            return
        routing = [t for t in packet if not isinstance(t, AgentRecordTlv | AgentQuery)]
        if routing:
            self.router.receive(link, routing, asyncio.get_running_loop().time())
            self._arm()
        for tlv in packet:
            if isinstance(tlv, AgentRecordTlv):
                self.agents.on_record(tlv, link)
            elif isinstance(tlv, AgentQuery):
                self.agents.on_query(tlv, link)

    def _on_data(self, link: Link | None, packet: DataPacket) -> None:
        if packet.dst[:8] == self.own8:
            self._count(self.counters.by_source, packet.src, len(packet.payload) + len(packet.sealed))
            self.sessions.receive(packet.src, packet.dst, packet.payload, packet.sealed)
            return
        if packet.hop_limit < 2:
            self.counters.hop_limit += 1
            return
        nxt = self.router.next_hop(packet.dst)
        if not isinstance(nxt, Link) or nxt is link:
            self.counters.no_route += 1
            return
        self.counters.forwarded += 1
        nxt.send(encode_data(replace(packet, hop_limit=packet.hop_limit - 1)), packet.sealed, droppable=True)

    def _count(self, table: dict[str, list[int]], addr: bytes, n: int) -> None:
        key = addr[:8].hex()
        entry = table.get(key)
        if entry is None:
            if len(table) >= 1024:
                return
            entry = table[key] = [0, 0]
        entry[0] += 1
        entry[1] += n

    def send_sealed(self, dst: bytes, payload: bytes, sealed: bytes) -> None:
        """Send a session's packet (head, end-to-end sealed body) from our address to `dst` (best effort)."""
        nxt = self.router.next_hop(dst)
        if not isinstance(nxt, Link):
            self.counters.no_route += 1
            return
        self._count(self.counters.by_destination, dst, len(payload) + len(sealed))
        nxt.send(encode_data(DataPacket(self.addr, dst, 64, payload, sealed)), sealed, droppable=True)

    def _deliver(self, peer: bytes, src: bytes, kind: int, body: memoryview) -> None:
        self.counters.delivered += 1
        if kind == KIND_MESSAGE:
            self.messages.on_frame(peer, body)
        elif kind == KIND_IPV6:
            # the inner source must lie in the sender's own /64 and the inner destination in ours
            if len(body) < 40 or body[0] >> 4 != 6 or body[8:16] != src[:8] or body[24:32] != self.own8:
                self.counters.spoofed += 1
                return
            if self.tun_write is not None:
                self.tun_write(body)
        else:
            self.counters.bad_packets += 1

    def _send_message_frame(self, peer: bytes, *frame: bytes | memoryview) -> None:
        self.sessions.send(peer, KIND_MESSAGE, *frame)

    def send_ipv6(self, packet: bytes) -> None:
        """An IPv6 packet from the TUN: seal it for the node that owns the destination's /64."""
        if len(packet) < 40 or packet[0] >> 4 != 6:
            self.counters.bad_packets += 1
            return
        dst = packet[24:40]
        peer = self.router.public_key_of(dst)
        if peer is None or dst[:8] == self.own8:
            self.counters.no_route += 1
            return
        self.sessions.send(peer, KIND_IPV6, packet)

    # agents

    def deliver_local(self, message: InboundMessage) -> None:
        """A message from this node to an agent it hosts (its own API, a local agent): no network, same path."""
        self.messages.inbox.arrived(message)

    def local_message(self, agent: str | None, topic: bytes, payload: bytes, *, src_agent: str | None = None,
                      reply_to: str | None = None) -> InboundMessage:
        """A message from this node to itself: for `agent` (or the API's inbox), as a reply with `reply_to`."""
        me, ip = self.identity.public.hex(), str(self.identity.address)
        return InboundMessage(reply_to or secrets.token_bytes(8).hex(), ip, me, ip, agent or me, topic, payload,
                              reply_to is not None, agent, src_agent)

    def hosts_agent(self, agent_id: str) -> bool:
        return self.agents.is_local(bytes.fromhex(agent_id))

    def _flood(self, tlv: Tlv, except_link: object | None) -> None:
        packet = encode_control([tlv])
        for link in self.links:
            if link is not except_link:
                link.send(packet)

    def _refresh_records(self) -> None:
        self.agents.refresh()
        self._record_timer = asyncio.get_running_loop().call_later(RECORD_TTL_S / 3, self._refresh_records)

    # views

    def info(self) -> dict[str, Any]:
        return {
            "nodeSubnet": str(self.identity.subnet),
            "nodeIp": str(self.identity.address),
            "nodePubkey": self.identity.public.hex(),
            "nodeStartTime": int(self.started),
        }

    def peers_json(self) -> list[dict[str, Any]]:
        rows = [link.to_json() for link in self.links]
        connected = {row["endpoint"]["addr"]["socket"] for row in rows}  # type: ignore[index]
        for peer in self.dialer.peers.values():
            addr = str(peer.endpoint).partition("://")[2]
            if addr not in connected:
                rows.append({"endpoint": {"proto": peer.endpoint.proto, "addr": {"socket": addr}}, "type": "static",
                             "connectionState": "connecting", "txBytes": 0, "rxBytes": 0,
                             "lastError": peer.last_error})
        return rows
