"""Whole messages waiting for the API (or a reply waiter, or an agent handler), and their JSON shapes.

The inbox is a deque plus futures: a long-poll waits on a future and holds no
lock, so it never blocks other calls. It keeps at most `MAX_INBOX` messages and
`MAX_INBOX_BYTES` of payload; past that the oldest unread message is dropped
(and counted), as Mycelium drops when its queue is full.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_INBOX = 1000
MAX_INBOX_BYTES = 256 << 20


def b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode()


@dataclass
class InboundMessage:
    id: str
    src_ip: str
    src_pk: str
    dst_ip: str
    dst_pk: str
    topic: bytes
    payload: bytes | bytearray  # the receive buffer itself (no copy of up to 16 MiB); nobody writes to it
    reply: bool = False
    agent: str | None = None  # the agent it is for (Hero's wire, or the topic `hero/agent/<id>`)
    src_agent: str | None = None  # the agent that sent it (Hero's wire: vouched for by the sending node)
    received: float = field(default_factory=time.time)

    def _head(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "srcIp": self.src_ip, "srcPk": self.src_pk, "dstIp": self.dst_ip,
                               "dstPk": self.dst_pk}
        if self.topic:
            out["topic"] = b64(self.topic)
        return out

    def to_json(self) -> dict[str, Any]:
        return self._head() | {"payload": b64(self.payload)}

    def json_bytes(self) -> bytes:
        """`to_json()` as JSON text, without running a JSON encoder over the payload: base64 needs no escaping."""
        head = json.dumps(self._head(), separators=(",", ":")).encode()
        return b"".join((head[:-1], b',"payload":"', binascii.b2a_base64(self.payload, newline=False), b'"}'))


class Inbox:
    def __init__(self, on_read: Callable[[InboundMessage], None]) -> None:
        self._on_read = on_read  # a message was taken: the sender hears READ
        self._inbox: deque[InboundMessage] = deque()
        self._bytes = 0
        self.dropped = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._replies: dict[str, asyncio.Future[InboundMessage]] = {}
        self._senders: OrderedDict[str, bytes] = OrderedDict()  # received message id -> sender (for replies)
        self.handlers: list[Callable[[InboundMessage], bool]] = []  # first that returns True consumes it

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
        while self._inbox and (len(self._inbox) >= MAX_INBOX or self._bytes + len(message.payload) > MAX_INBOX_BYTES):
            self._bytes -= len(self._inbox.popleft().payload)
            self.dropped += 1
        self._inbox.append(message)
        self._bytes += len(message.payload)
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
                        self._bytes -= len(message.payload)
                        self._on_read(message)
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

    def __len__(self) -> int:
        return len(self._inbox)
