"""Forged announcements, spoofed inner sources, replays and blocked keys are dropped and counted."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from hero.net import locator
from hero.net.address import Identity
from hero.net.handshake import CipherState, Handshake
from hero.net.link import PROLOGUE, Link, LinkProtocol
from hero.net.node import OverlayConfig, OverlayNode
from hero.net.session import KIND_IPV6
from hero.net.wire import Update, encode_control, update_signed_bytes


@asynccontextmanager
async def nodes(count: int, **config: object) -> AsyncIterator[list[OverlayNode]]:
    """A line of real nodes on 127.0.0.1 in this loop: n0 - n1 - ... (each dials the previous)."""
    out: list[OverlayNode] = []
    try:
        for _ in range(count):
            peers = (f"tcp://127.0.0.1:{out[-1].port}",) if out else ()
            node = OverlayNode(Identity.generate(), OverlayConfig(listen_host="127.0.0.1", tcp_listen_port=0,
                                                                  peers=peers, **config))  # type: ignore[arg-type]
            await node.start()
            out.append(node)
        for node in out:
            await until(lambda n=node: len(n.router.selected) == count - 1)
        yield out
    finally:
        for node in reversed(out):
            await node.aclose()


async def until(check, limit_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_forged_announcement_for_another_subnet_is_dropped() -> None:
    async with nodes(3) as (a, m, v):
        victim = v.identity
        link = next(iter(m.links))  # m's link towards a (m dialled a)
        if link.remote != a.identity.public:
            link = next(x for x in m.links if x.remote == a.identity.public)
        prefix = victim.subnet.network_address.packed
        rid = victim.router_id.encode()
        forged_sig = m.identity.sign(update_signed_bytes(64, prefix, rid, 7))  # m signs in v's name
        link.send(encode_control([Update(64, 100, 7, 0, prefix, rid, forged_sig)]))
        # and m claims v's /64 under its own router id (Mycelium's hijack)
        own_rid = m.identity.router_id.encode()
        link.send(encode_control([Update(64, 100, 9, 0, prefix, own_rid,
                                         m.identity.sign(update_signed_bytes(64, prefix, own_rid, 9)))]))
        await until(lambda: a.router.stats.bad_signature >= 1 and a.router.stats.bad_subnet >= 1)
        route = a.router.selected[prefix[:8]]
        assert route.router_id == rid and route.seqno == 0  # still v's genuine announcement


async def test_spoofed_inner_source_is_dropped() -> None:
    async with nodes(3) as (a, m, v):
        received: list[bytes] = []
        a.tun_write = received.append

        def ipv6(src: bytes, dst: bytes) -> bytes:
            return bytes([0x60, 0, 0, 0, 0, 0, 59, 64]) + src + dst

        m.sessions.send(a.identity.public, KIND_IPV6, ipv6(v.addr, a.addr))  # claims to come from v
        m.sessions.send(a.identity.public, KIND_IPV6, ipv6(m.addr, a.addr))  # honest
        await until(lambda: len(received) == 1 and a.counters.spoofed == 1)
        assert received[0][8:24] == m.addr


async def test_replayed_packet_is_dropped() -> None:
    async with nodes(2) as (a, b):
        sent: list[tuple[bytes, bytes, bytes]] = []
        original = b.send_sealed

        def record(dst: bytes, payload: bytes, sealed: bytes) -> None:
            sent.append((dst, payload, sealed))
            original(dst, payload, sealed)

        b.sessions._send_raw = record
        b.messages.push(a.identity.public, b"t", b"once")
        message = await a.messages.inbox.pop(topic=b"t", timeout_s=5, peek=False)
        assert message is not None and message.payload == b"once"
        data = [(d, p, s) for d, p, s in sent if p[0] == 3]
        for dst, payload, sealed in data:
            original(dst, payload, sealed)  # a relay replays every data packet it saw
        await until(lambda: a.sessions.stats.replayed >= len(data))
        assert await a.messages.inbox.pop(topic=b"t", timeout_s=0.3, peek=False) is None


async def test_blocked_key_cannot_link() -> None:
    bad = Identity.generate()
    a = OverlayNode(Identity.generate(), OverlayConfig(listen_host="127.0.0.1", tcp_listen_port=0,
                                                       blocked_keys=(bad.public.hex(),)))
    await a.start()
    m = OverlayNode(bad, OverlayConfig(listen_host="127.0.0.1", tcp_listen_port=0,
                                       peers=(f"tcp://127.0.0.1:{a.port}",)))
    await m.start()
    try:
        await until(lambda: a.counters.blocked >= 1)
        assert not a.links
    finally:
        await m.aclose()
        await a.aclose()


async def test_garbage_on_the_listener_is_counted_and_the_node_keeps_serving() -> None:
    async with nodes(2) as (a, b):
        for junk in (b"\x00" * 10, b"\xff\xff" + b"x" * 100, b"GET / HTTP/1.1\r\n\r\n"):
            _, writer = await asyncio.open_connection("127.0.0.1", a.port)
            writer.write(junk)
            await writer.drain()
            writer.close()
        await until(lambda: a.counters.handshakes_failed >= 3, limit_s=15)
        b.messages.push(a.identity.public, b"t", b"still here")
        message = await a.messages.inbox.pop(topic=b"t", timeout_s=5, peek=False)
        assert message is not None and message.payload == b"still here"


async def test_flooding_peer_is_rate_limited() -> None:
    async with nodes(2, control_rate=50.0) as (a, b):
        link = next(iter(b.links))
        for _ in range(500):
            link.send(encode_control([]))
        await until(lambda: a.counters.rate_limited > 0)
        assert a.links  # the link lives on


class Capture(asyncio.Transport):
    """A transport that keeps what is written (the bytes a wire would carry)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def linked_pair() -> tuple[Link, Callable[[], tuple[LinkProtocol, Link, list[tuple[bytes, bytes]]]]]:
    """A sending link on a captured wire, and a factory of fresh receiving links with the matching keys."""
    a, b = Identity.generate(), Identity.generate()
    i = Handshake("XXhfs", initiator=True, static_secret=a.secret, prologue=PROLOGUE)
    r = Handshake("XXhfs", initiator=False, static_secret=b.secret, prologue=PROLOGUE)
    r.read(i.write())
    i.read(r.write())
    r.read(i.write())
    send, _ = i.split()
    _, receive = r.split()
    out = LinkProtocol()
    out.connection_made(Capture())
    sender = Link(out, send, CipherState(), b.public, endpoint="tcp://a", inbound=False)

    def receiver() -> tuple[LinkProtocol, Link, list[tuple[bytes, bytes]]]:
        protocol = LinkProtocol()
        protocol.connection_made(Capture())
        link = Link(protocol, CipherState(), CipherState(receive.k), a.public, endpoint="tcp://b", inbound=True)
        got: list[tuple[bytes, bytes]] = []
        link.start(lambda _, packet, part: got.append((packet, part)))
        return protocol, link, got

    return sender, receiver


def feed(protocol: LinkProtocol, data: bytes, step: int) -> None:
    """As a transport would: into the buffer the protocol offers, at most `step` bytes a read."""
    at = 0
    while at < len(data) and not (protocol.transport and protocol.transport.is_closing()):
        buffer = protocol.get_buffer(-1)
        piece = data[at : at + min(step, len(buffer))]
        buffer[: len(piece)] = piece
        protocol.buffer_updated(len(piece))
        at += len(piece)


async def test_links_encrypt_heads_and_authenticate_sealed_parts() -> None:
    """User data is sealed once, end to end; a link hides the head and lets no byte of either be changed."""
    sender, receiver = linked_pair()
    frames = [(f"head {i}: addresses, session index".encode(), os.urandom(i * 20_011 % 65_000)) for i in range(40)]
    for head, sealed in frames:
        sender.send(head, sealed)
    await asyncio.sleep(0)  # small frames leave at the end of the loop iteration
    wire = bytes(sender.transport.data)  # type: ignore[attr-defined]
    assert frames[5][1] in wire and frames[5][0] not in wire
    for step in (len(wire), 1 << 16, 4093, 7):  # however the bytes arrive, every frame comes out once
        protocol, link, got = receiver()
        feed(protocol, wire, step)
        assert got == frames and not link.transport.is_closing()
    tampered = bytearray(wire)
    tampered[wire.index(frames[5][1]) + 100] ^= 1
    protocol, link, got = receiver()
    feed(protocol, bytes(tampered), 1 << 16)
    assert got == frames[:5] and link.transport.is_closing()  # the forged frame closes the link


async def test_an_agent_sending_to_made_up_ids_cannot_flood_the_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locator, "NOT_FOUND_S", 60.0)
    flooded: list[object] = []
    finder = locator.AgentLocator(Identity.generate(), lambda tlv, link: flooded.append(tlv))
    nobody = bytes(32)
    assert await finder.find(nobody, 0.05) is None
    assert await finder.find(nobody, 0.05) is None  # asked again at once: known missing, no second query
    assert len(flooded) == 1
    found = await asyncio.gather(*(finder.find(os.urandom(32), 0.05) for _ in range(200)))
    assert found == [None] * 200
    assert len(flooded) <= 1 + 2 * locator.QUERIES_PER_S + 2 and finder.queries_refused >= 150
