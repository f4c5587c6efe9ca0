"""Mycelium's message protocol (INIT, CHUNK, DONE, ACK, READ, REPLY) and the inbox behind the message API.

A message of up to `MAX_MESSAGE_BYTES` (16 MiB; Mycelium allocates whatever
INIT claims) is split into chunks of `CHUNK_BYTES`. The sender does not wait
for INIT's ack: INIT, the first `WINDOW` chunks and, once every chunk is out,
DONE (the count and a BLAKE3 hash of the whole) leave back to back, so a
message that fits the window costs one round trip. The receiver acks
selectively (every chunk below a base, plus a bitmap of the next 64) after
every `ACK_EVERY` new chunks, on a duplicate, and when DONE finds a gap; DONE's
ack says the whole message arrived. Whatever is unacked after `RESEND_S` is
sent again (links are ordered, so loss means a reroute or a full link).
Frames ride end-to-end sessions, so relays see none of this. Messages being
received hold at most `MAX_PARTIAL_BYTES`; an INIT past that waits (unacked)
for room. Whole messages go to the inbox (inbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from hero.net.inbox import InboundMessage, Inbox
from hero.nursery import Nursery

log = logging.getLogger("hero.net")

INIT, DONE, ABORTED, CHUNK, READ, REPLY, ACK = 0x8000, 0x4000, 0x2000, 0x1000, 0x0800, 0x0400, 0x0100
AGENT = 0x0080  # Hero: INIT carries the target agent's id (32 bytes) after the topic
FROM_AGENT = 0x0040  # Hero: INIT carries the sending agent's id (32 bytes) after that
CHUNK_BYTES = 60 * 1024
MAX_MESSAGE_BYTES = 16 << 20
MAX_TOPIC_BYTES = 255
WINDOW = 64
ACK_EVERY = 16
RESEND_S = 0.2
SEND_TIMEOUT_S = 300.0
MAX_PARTIAL = 256
MAX_PARTIAL_BYTES = 64 << 20
_HDR = struct.Struct(">8sHH")
_INIT = struct.Struct(">QB")
_CHUNK = struct.Struct(">QQQ")
_SACK = struct.Struct(">QQ")  # every chunk below base arrived; bit i: chunk base + i arrived
_DONE = struct.Struct(">Q32s")


@dataclass(eq=False)
class Outbound:
    id: bytes
    dst_pk: bytes
    dst_ip: str
    topic: bytes
    payload: bytes
    reply: bool
    agent: bytes | None
    src_agent: bytes | None = None
    created: float = field(default_factory=time.time)
    state: str = "pending"  # pending | sending | received | read | aborted
    init_acked: bool = False
    done_acked: bool = False
    acked: set[int] = field(default_factory=set)
    sent: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self) -> str:
        """Until the receiver has the whole message (`received`, or `read`) or the send ends `aborted`."""
        await self.ended.wait()
        return self.state

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
    src_agent: bytes | None = None
    have: set[int] = field(default_factory=set)
    unacked: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.length / CHUNK_BYTES))


@dataclass
class MessageStats:
    sent: int = 0
    received: int = 0
    aborted: int = 0
    bad_frames: int = 0
    too_large: int = 0
    resent_chunks: int = 0
    busy: int = 0  # INITs left waiting: messages being received already held MAX_PARTIAL_BYTES


class MessageService:
    def __init__(self, send_frame: Callable[..., None], nursery: Nursery, *, local_pk: bytes,
                 local_ip: str, ip_of: Callable[[bytes], str]) -> None:
        self._send_frame = send_frame  # (destination public key, *frame parts)
        self._nursery = nursery
        self.local_pk = local_pk
        self.local_ip = local_ip
        self._ip_of = ip_of
        self.stats = MessageStats()
        self._out: OrderedDict[tuple[bytes, bool], Outbound] = OrderedDict()
        self._partial: dict[tuple[bytes, bytes, bool], _Partial] = {}
        self._partial_bytes = 0
        self._done: OrderedDict[tuple[bytes, bytes, bool], None] = OrderedDict()
        self.inbox = Inbox(self._read)

    # sending

    def push(self, dst_pk: bytes, topic: bytes, payload: bytes, *, reply_to: str | None = None,
             agent: bytes | None = None, src_agent: bytes | None = None) -> Outbound:
        """Send to the node `dst_pk` (for its agent `agent`, from our agent `src_agent`); as a reply with `reply_to`."""
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message over {MAX_MESSAGE_BYTES} bytes")
        mid = bytes.fromhex(reply_to) if reply_to else secrets.token_bytes(8)
        out = Outbound(mid, dst_pk, self._ip_of(dst_pk), topic, payload, reply_to is not None, agent, src_agent)
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

    def _frame(self, out: Outbound, flags: int, *body: bytes | memoryview) -> None:
        flags |= REPLY if out.reply else 0
        self._send_frame(out.dst_pk, _HDR.pack(out.id, flags, 0), *body)

    async def _send(self, out: Outbound) -> None:
        loop = asyncio.get_running_loop()
        n = out.chunks
        view = memoryview(out.payload)
        init = _INIT.pack(len(out.payload), len(out.topic)) + out.topic + (out.agent or b"") + (out.src_agent or b"")
        init_flags = INIT | (AGENT if out.agent else 0) | (FROM_AGENT if out.src_agent else 0)
        in_flight: dict[int, float] = {}  # chunk -> when it was last sent
        nxt = 0
        init_at = done_at = -RESEND_S
        digest = b""
        out.state = "sending"
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                while not out.done_acked and out.state == "sending":
                    now = loop.time()
                    if not out.init_acked and now - init_at >= RESEND_S:
                        self._frame(out, init_flags, init)
                        init_at = now
                    for idx, at in list(in_flight.items()):
                        if idx in out.acked:
                            del in_flight[idx]
                        elif now - at >= RESEND_S:
                            self.stats.resent_chunks += 1
                            self._chunk(out, view, idx)
                            in_flight[idx] = now
                    while nxt < n and len(in_flight) < WINDOW:
                        self._chunk(out, view, nxt)
                        in_flight[nxt] = now
                        nxt += 1
                        out.sent = nxt
                    if nxt == n and now - done_at >= RESEND_S:
                        digest = digest or blake3.blake3(out.payload).digest()
                        self._frame(out, DONE, _DONE.pack(n, digest))
                        done_at = now
                    out.wake.clear()
                    with contextlib.suppress(TimeoutError):  # no word from the receiver: resend
                        async with asyncio.timeout(RESEND_S):
                            await out.wake.wait()
            if out.state in ("sending", "read"):
                out.state = "read" if out.state == "read" else "received"
                self.stats.sent += 1
        except TimeoutError:
            out.state = "aborted"
            self.stats.aborted += 1
            self._frame(out, ABORTED)
        finally:
            out.ended.set()

    def _chunk(self, out: Outbound, view: memoryview, idx: int) -> None:
        offset = idx * CHUNK_BYTES
        data = view[offset : offset + CHUNK_BYTES]
        self._frame(out, CHUNK, _CHUNK.pack(idx, offset, len(data)), data)

    # receiving

    def on_frame(self, src_pk: bytes, body: bytes | memoryview) -> None:
        """One message-protocol frame from the node with key `src_pk` (already authenticated end to end)."""
        if len(body) < _HDR.size:
            self.stats.bad_frames += 1
            return
        mid, flags, _ = _HDR.unpack_from(body)
        rest = memoryview(body)[_HDR.size :]
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
                    if flags & READ:
                        out.state = "read"
                    elif out.state == "sending":
                        out.state = "aborted"
                        self.stats.aborted += 1
                    out.wake.set()
                self._drop_partial((src_pk, mid, reply))
            else:
                self.stats.bad_frames += 1
        except (struct.error, ValueError):
            self.stats.bad_frames += 1

    def _ack(self, dst: bytes, mid: bytes, flags: int, reply: bool, body: bytes = b"") -> None:
        self._send_frame(dst, _HDR.pack(mid, flags | ACK | (REPLY if reply else 0), 0), body)

    def _sack(self, dst: bytes, mid: bytes, reply: bool, partial: _Partial) -> None:
        base = 0
        while base in partial.have:
            base += 1
        bits = sum(1 << i for i in range(64) if base + i in partial.have)
        partial.unacked = 0
        self._ack(dst, mid, CHUNK, reply, _SACK.pack(base, bits))

    def _on_ack(self, src_pk: bytes, mid: bytes, flags: int, reply: bool, rest: memoryview) -> None:
        out = self._out.get((mid, reply))
        if out is None or out.dst_pk != src_pk:
            return
        if flags & INIT:
            out.init_acked = True
            return  # the sender does not wait for it
        if flags & CHUNK:
            base, bits = _SACK.unpack_from(rest)
            out.init_acked = True
            out.acked.update(range(min(base, out.chunks)))
            out.acked.update(base + i for i in range(64) if bits >> i & 1 and base + i < out.chunks)
        elif flags & DONE:
            out.done_acked = True
        out.wake.set()

    def _drop_partial(self, key: tuple[bytes, bytes, bool]) -> _Partial | None:
        partial = self._partial.pop(key, None)
        if partial is not None:
            self._partial_bytes -= partial.length
        return partial

    def _on_init(self, src_pk: bytes, mid: bytes, flags: int, reply: bool, rest: memoryview) -> None:
        length, topic_len = _INIT.unpack_from(rest)
        topic = bytes(rest[_INIT.size : _INIT.size + topic_len])
        at = _INIT.size + topic_len
        agent = bytes(rest[at : at + 32]) if flags & AGENT else None
        at += 32 if flags & AGENT else 0
        src_agent = bytes(rest[at : at + 32]) if flags & FROM_AGENT else None
        if len(topic) != topic_len or any(a is not None and len(a) != 32 for a in (agent, src_agent)):
            raise ValueError("truncated INIT")
        key = (src_pk, mid, reply)
        if length > MAX_MESSAGE_BYTES:
            self.stats.too_large += 1
            self._send_frame(src_pk, _HDR.pack(mid, ABORTED | (REPLY if reply else 0), 0))
            return
        if key not in self._partial and key not in self._done:
            now = time.monotonic()
            for stale in [k for k, p in self._partial.items() if now - p.started > SEND_TIMEOUT_S]:
                self._drop_partial(stale)
            if len(self._partial) >= MAX_PARTIAL:
                self._drop_partial(min(self._partial, key=lambda k: self._partial[k].started))
            if self._partial_bytes + length > MAX_PARTIAL_BYTES:
                self.stats.busy += 1
                return  # no ack: the sender sends INIT again and is let in once there is room
            self._partial[key] = _Partial(length, topic, agent, bytearray(length), src_agent)
            self._partial_bytes += length
        self._ack(src_pk, mid, INIT, reply)

    def _on_chunk(self, src_pk: bytes, mid: bytes, reply: bool, rest: memoryview) -> None:
        idx, offset, size = _CHUNK.unpack_from(rest)
        data = rest[_CHUNK.size :]
        key = (src_pk, mid, reply)
        partial = self._partial.get(key)
        if partial is None:
            if key in self._done:
                self._ack(src_pk, mid, DONE, reply)
            return
        if size != len(data) or offset != idx * CHUNK_BYTES or offset + size > partial.length:
            raise ValueError("chunk outside the message")
        if idx in partial.have:
            self._sack(src_pk, mid, reply, partial)  # a resend: our ack was lost or late
            return
        partial.buffer[offset : offset + size] = data
        partial.have.add(idx)
        partial.unacked += 1
        if partial.unacked >= ACK_EVERY:
            self._sack(src_pk, mid, reply, partial)

    def _on_done(self, src_pk: bytes, mid: bytes, reply: bool, rest: memoryview) -> None:
        count, digest = _DONE.unpack_from(rest)
        key = (src_pk, mid, reply)
        if key in self._done:
            self._ack(src_pk, mid, DONE, reply)
            return
        partial = self._partial.get(key)
        if partial is None:
            return
        if count != partial.count:
            raise ValueError("DONE counts another number of chunks")
        if len(partial.have) != count:
            self._sack(src_pk, mid, reply, partial)  # tell the sender what is missing
            return
        self._drop_partial(key)
        if blake3.blake3(partial.buffer).digest() != digest:
            self.stats.bad_frames += 1
            return
        self._done[key] = None
        while len(self._done) > 10_000:
            self._done.popitem(last=False)
        self._ack(src_pk, mid, DONE, reply)
        self.stats.received += 1
        message = InboundMessage(
            mid.hex(), self._ip_of(src_pk), src_pk.hex(), self.local_ip,
            partial.agent.hex() if partial.agent else self.local_pk.hex(), partial.topic, partial.buffer,
            reply, partial.agent.hex() if partial.agent else None,
            partial.src_agent.hex() if partial.src_agent else None,
        )
        self.inbox.arrived(message)

    def _read(self, message: InboundMessage) -> None:
        """Tell the sender its message was read (taken from the inbox)."""
        self._send_frame(bytes.fromhex(message.src_pk), _HDR.pack(bytes.fromhex(message.id), READ, 0))
