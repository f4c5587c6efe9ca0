"""Mycelium's message protocol (INIT, CHUNK, DONE, ACK, READ, REPLY) and the inbox behind the message API.

A message of up to `MAX_MESSAGE_BYTES` (16 MiB; Mycelium allocates whatever
INIT claims) is split into chunks of `CHUNK_BYTES`, sent with a window of
`WINDOW` unacknowledged chunks, each acked and resent after `RESEND_S`; DONE
carries the count and a BLAKE3 hash of the whole. Frames ride end-to-end
sessions, so relays see none of this. The inbox is a deque plus futures: a
long-poll waits on a future and holds no lock, so it never blocks other calls.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import secrets
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from hero.nursery import Nursery

log = logging.getLogger("hero.net")

INIT, DONE, ABORTED, CHUNK, READ, REPLY, ACK = 0x8000, 0x4000, 0x2000, 0x1000, 0x0800, 0x0400, 0x0100
AGENT = 0x0080  # Hero: INIT carries the target agent's id (32 bytes) after the topic
CHUNK_BYTES = 60 * 1024
MAX_MESSAGE_BYTES = 16 << 20
MAX_TOPIC_BYTES = 255
WINDOW = 64
INIT_RESEND_S = 0.1
RESEND_S = 0.25
SEND_TIMEOUT_S = 300.0
MAX_INBOX = 1000
MAX_PARTIAL = 256
_HDR = struct.Struct(">8sHH")
_CHUNK = struct.Struct(">QQQ")
_DONE = struct.Struct(">Q32s")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class InboundMessage:
    id: str
    src_ip: str
    src_pk: str
    dst_ip: str
    dst_pk: str
    topic: bytes
    payload: bytes
    reply: bool = False
    agent: str | None = None
    received: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "srcIp": self.src_ip, "srcPk": self.src_pk, "dstIp": self.dst_ip,
                               "dstPk": self.dst_pk, "payload": b64(self.payload)}
        if self.topic:
            out["topic"] = b64(self.topic)
        return out


@dataclass(eq=False)
class Outbound:
    id: bytes
    dst_pk: bytes
    dst_ip: str
    topic: bytes
    payload: bytes
    reply: bool
    agent: bytes | None
    created: float = field(default_factory=time.time)
    state: str = "pending"  # pending | sending | received | read | aborted
    init_acked: bool = False
    done_acked: bool = False
    acked: set[int] = field(default_factory=set)
    sent: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def chunks(self) -> int:
        return max(1, math.ceil(len(self.payload) / CHUNK_BYTES))

    def info(self) -> dict[str, Any]:
        state: Any = self.state
        if self.state == "sending":
            state = {"sending": {"pending": self.chunks - self.sent, "sent": self.sent, "acked": len(self.acked)}}
        return {"dst": self.dst_ip, "state": state, "created": int(self.created),
                "deadline": int(self.created + SEND_TIMEOUT_S), "msgLen": len(self.payload)}


@dataclass(eq=False)
class _Partial:
    length: int
    topic: bytes
    agent: bytes | None
    buffer: bytearray
    have: set[int] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)


@dataclass
class MessageStats:
    sent: int = 0
    received: int = 0
    aborted: int = 0
    bad_frames: int = 0
    too_large: int = 0
    inbox_dropped: int = 0


class MessageService:
    def __init__(self, send_frame: Callable[[bytes, bytes], None], nursery: Nursery, *, local_pk: bytes,
                 local_ip: str, ip_of: Callable[[bytes], str]) -> None:
        self._send_frame = send_frame  # (destination public key, frame)
        self._nursery = nursery
        self.local_pk = local_pk
        self.local_ip = local_ip
        self._ip_of = ip_of
        self.stats = MessageStats()
        self._out: OrderedDict[tuple[bytes, bool], Outbound] = OrderedDict()
        self._partial: dict[tuple[bytes, bytes, bool], _Partial] = {}
        self._done: OrderedDict[tuple[bytes, bytes, bool], None] = OrderedDict()
        self._inbox: deque[InboundMessage] = deque()
        self._waiters: set[asyncio.Future[None]] = set()
        self._replies: dict[str, asyncio.Future[InboundMessage]] = {}
        self._senders: OrderedDict[str, bytes] = OrderedDict()  # received message id -> sender (for replies)
        self.handlers: list[Callable[[InboundMessage], bool]] = []  # first that returns True consumes it

    # sending

    def push(self, dst_pk: bytes, topic: bytes, payload: bytes, *, reply_to: str | None = None,
             agent: bytes | None = None) -> Outbound:
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message over {MAX_MESSAGE_BYTES} bytes")
        mid = bytes.fromhex(reply_to) if reply_to else secrets.token_bytes(8)
        out = Outbound(mid, dst_pk, self._ip_of(dst_pk), topic, payload, reply_to is not None, agent)
        self._out[(mid, out.reply)] = out
        while len(self._out) > 10_000:
            self._out.popitem(last=False)
        self._nursery.spawn(self._send(out), name=f"msg:{mid.hex()}")
        return out

    def status(self, mid: str) -> Outbound | None:
        try:
            key = bytes.fromhex(mid)
        except ValueError:
            return None
        return self._out.get((key, False)) or self._out.get((key, True))

    def _frame(self, out: Outbound, flags: int, body: bytes = b"") -> None:
        flags |= REPLY if out.reply else 0
        self._send_frame(out.dst_pk, _HDR.pack(out.id, flags, 0) + body)

    async def _wait(self, out: Outbound, seconds: float) -> None:
        try:
            await asyncio.wait_for(out.wake.wait(), seconds)
        except TimeoutError:
            return
        finally:
            out.wake.clear()

    async def _send(self, out: Outbound) -> None:
        loop = asyncio.get_running_loop()
        n = out.chunks
        init = struct.pack(">QB", len(out.payload), len(out.topic)) + out.topic + (out.agent or b"")
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                while not out.init_acked:
                    self._frame(out, INIT | (AGENT if out.agent else 0), init)
                    await self._wait(out, INIT_RESEND_S)
                out.state = "sending"
                sent_at: dict[int, float] = {}
                nxt = 0
                while len(out.acked) < n:
                    now = loop.time()
                    for idx, at in list(sent_at.items()):
                        if idx in out.acked:
                            del sent_at[idx]
                        elif now - at > RESEND_S:
                            self._chunk(out, idx)
                            sent_at[idx] = now
                    while nxt < n and len(sent_at) < WINDOW:
                        self._chunk(out, nxt)
                        sent_at[nxt] = now
                        nxt += 1
                        out.sent = nxt
                    if len(out.acked) < n:
                        await self._wait(out, RESEND_S)
                digest = blake3.blake3(out.payload).digest()
                while not out.done_acked:
                    self._frame(out, DONE, _DONE.pack(n, digest))
                    await self._wait(out, RESEND_S)
            if out.state != "read":
                out.state = "received"
            self.stats.sent += 1
        except TimeoutError:
            out.state = "aborted"
            self.stats.aborted += 1
            self._frame(out, ABORTED)

    def _chunk(self, out: Outbound, idx: int) -> None:
        offset = idx * CHUNK_BYTES
        data = out.payload[offset : offset + CHUNK_BYTES]
        self._frame(out, CHUNK, _CHUNK.pack(idx, offset, len(data)) + data)

    # receiving

    def on_frame(self, src_pk: bytes, body: bytes) -> None:
        """One message-protocol frame from the node with key `src_pk` (already authenticated end to end)."""
        if len(body) < _HDR.size:
            self.stats.bad_frames += 1
            return
        mid, flags, _ = _HDR.unpack_from(body)
        rest = body[_HDR.size :]
        reply = bool(flags & REPLY)
        try:
            if flags & ACK:
                self._on_ack(src_pk, mid, flags, reply, rest)
            elif flags & INIT:
                self._on_init(src_pk, mid, flags, reply, rest)
            elif flags & CHUNK:
                self._on_chunk(src_pk, mid, reply, rest)
            elif flags & DONE:
                self._on_done(src_pk, mid, reply, rest)
            elif flags & (READ | ABORTED):
                out = self._out.get((mid, reply))
                if out is not None and out.dst_pk == src_pk:
                    out.state = "read" if flags & READ else "aborted"
                    out.wake.set()
                self._partial.pop((src_pk, mid, reply), None)
            else:
                self.stats.bad_frames += 1
        except (struct.error, ValueError):
            self.stats.bad_frames += 1

    def _ack(self, dst: bytes, mid: bytes, flags: int, reply: bool, body: bytes = b"") -> None:
        self._send_frame(dst, _HDR.pack(mid, flags | ACK | (REPLY if reply else 0), 0) + body)

    def _on_ack(self, src_pk: bytes, mid: bytes, flags: int, reply: bool, rest: bytes) -> None:
        out = self._out.get((mid, reply))
        if out is None or out.dst_pk != src_pk:
            return
        if flags & INIT:
            out.init_acked = True
        elif flags & CHUNK:
            idx, _, _ = _CHUNK.unpack_from(rest)
            out.acked.add(idx)
            if len(out.acked) < out.chunks:
                return  # the sender wakes on its resend timer or the last ack: one wake per window, not per chunk
        elif flags & DONE:
            out.done_acked = True
        out.wake.set()

    def _on_init(self, src_pk: bytes, mid: bytes, flags: int, reply: bool, rest: bytes) -> None:
        length, topic_len = struct.unpack_from(">QB", rest)
        topic = rest[9 : 9 + topic_len]
        agent = rest[9 + topic_len : 9 + topic_len + 32] if flags & AGENT else None
        if len(topic) != topic_len or (agent is not None and len(agent) != 32):
            raise ValueError("truncated INIT")
        key = (src_pk, mid, reply)
        if length > MAX_MESSAGE_BYTES:
            self.stats.too_large += 1
            self._send_frame(src_pk, _HDR.pack(mid, ABORTED | (REPLY if reply else 0), 0))
            return
        if key not in self._partial and key not in self._done:
            if len(self._partial) >= MAX_PARTIAL:
                oldest = min(self._partial, key=lambda k: self._partial[k].started)
                del self._partial[oldest]
            self._partial[key] = _Partial(length, topic, agent, bytearray(length))
        self._ack(src_pk, mid, INIT, reply)

    def _on_chunk(self, src_pk: bytes, mid: bytes, reply: bool, rest: bytes) -> None:
        idx, offset, size = _CHUNK.unpack_from(rest)
        data = rest[_CHUNK.size :]
        key = (src_pk, mid, reply)
        partial = self._partial.get(key)
        if partial is None:
            if key in self._done:
                self._ack(src_pk, mid, CHUNK, reply, rest[: _CHUNK.size])
            return
        if size != len(data) or offset != idx * CHUNK_BYTES or offset + size > partial.length:
            raise ValueError("chunk outside the message")
        partial.buffer[offset : offset + size] = data
        partial.have.add(idx)
        self._ack(src_pk, mid, CHUNK, reply, rest[: _CHUNK.size])

    def _on_done(self, src_pk: bytes, mid: bytes, reply: bool, rest: bytes) -> None:
        count, digest = _DONE.unpack_from(rest)
        key = (src_pk, mid, reply)
        if key in self._done:
            self._ack(src_pk, mid, DONE, reply)
            return
        partial = self._partial.get(key)
        if partial is None:
            return
        if len(partial.have) != count or count != max(1, math.ceil(partial.length / CHUNK_BYTES)):
            return  # chunks still missing: the sender resends them and DONE
        if blake3.blake3(partial.buffer).digest() != digest:
            self.stats.bad_frames += 1
            del self._partial[key]
            return
        del self._partial[key]
        self._done[key] = None
        while len(self._done) > 10_000:
            self._done.popitem(last=False)
        self._ack(src_pk, mid, DONE, reply)
        self.stats.received += 1
        message = InboundMessage(
            mid.hex(), self._ip_of(src_pk), src_pk.hex(), self.local_ip,
            partial.agent.hex() if partial.agent else self.local_pk.hex(), partial.topic, bytes(partial.buffer),
            reply, partial.agent.hex() if partial.agent else None,
        )
        self.arrived(message)

    def sender_of(self, mid: str) -> bytes | None:
        return self._senders.get(mid)

    def arrived(self, message: InboundMessage) -> None:
        """A complete message: a waited-for reply, else the first handler that takes it (agents), else the inbox."""
        self._senders[message.id] = bytes.fromhex(message.src_pk)
        while len(self._senders) > 10_000:
            self._senders.popitem(last=False)
        if message.reply:
            waiter = self._replies.pop(message.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
                return
        for handler in self.handlers:
            if handler(message):
                return
        if len(self._inbox) >= MAX_INBOX:
            self._inbox.popleft()
            self.stats.inbox_dropped += 1
        self._inbox.append(message)
        for poller in self._waiters:
            if not poller.done():
                poller.set_result(None)

    # the API's side

    async def pop(self, *, topic: bytes | None, timeout_s: float, peek: bool) -> InboundMessage | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for message in self._inbox:
                if topic is None or message.topic == topic:
                    if not peek:
                        self._inbox.remove(message)
                        self._send_frame(bytes.fromhex(message.src_pk),
                                         _HDR.pack(bytes.fromhex(message.id), READ, 0))
                    return message
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return None
            finally:
                self._waiters.discard(waiter)

    async def wait_reply(self, mid: str, timeout_s: float) -> InboundMessage | None:
        waiter: asyncio.Future[InboundMessage] = asyncio.get_running_loop().create_future()
        self._replies[mid] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._replies.pop(mid, None)

    @property
    def inbox_size(self) -> int:
        return len(self._inbox)
