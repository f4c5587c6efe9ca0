"""A link to one neighbour: a TCP stream opened with a Noise handshake, then encrypted frames.

Frame: length u32 of the rest, head length u16, the head under ChaCha20-Poly1305
(the link's counter nonce), then the sealed part as that AEAD's associated
data. The head is the packet (headers, control TLVs, handshakes); the sealed
part is what the end-to-end session already sealed (forward-secret, hybrid
post-quantum, replay-protected): the link authenticates it but does not
encrypt it a second time. So every byte on the wire is authenticated hop by
hop, addresses and routing are hidden from the wire, and user data is
encrypted once. The AEAD's tag covers both lengths, so the split cannot be
moved. Both sides re-key (Noise `Rekey`) every `REKEY_FRAMES` frames.
A frame that fails to decrypt means the stream is broken: the link closes.
A packet that fails to decode is dropped and counted; the link lives on.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from hero.net.address import Identity
from hero.net.handshake import CipherState, Handshake, HandshakeError

PROLOGUE = b"hero-overlay-link-v1"
MAX_FRAME = 70_000
MAX_HANDSHAKE_MESSAGE = 4096
REKEY_FRAMES = 1 << 16
HANDSHAKE_TIMEOUT_S = 5.0
CORK_BELOW = 8192  # smaller frames (acks, control) wait for the end of the loop iteration and leave together
WRITE_BUFFER_LIMIT = 8 << 20  # past this, data packets are dropped (the message layer retransmits)
_FRAME = struct.Struct(">IH")  # bytes after the u32; head ciphertext bytes
_HLEN = struct.Struct(">H")


class LinkClosed(Exception):
    pass


@dataclass
class LinkStats:
    tx_packets: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    dropped: int = 0  # undecodable, rate-limited or over the write buffer
    rate_limited: int = 0


class TokenBucket:
    """Control packets per second a neighbour may send us; a flooding peer's excess is dropped."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    identity: Identity,
    *,
    initiator: bool,
    pattern: str = "XXhfs",
) -> tuple[CipherState, CipherState, bytes]:
    """Run the link handshake; returns (send, receive, remote static key). Raises HandshakeError."""
    hs = Handshake(pattern, initiator=initiator, static_secret=identity.secret, prologue=PROLOGUE)

    async def write(payload: bytes = b"") -> None:
        message = hs.write(payload)
        writer.write(_HLEN.pack(len(message)) + message)
        await writer.drain()

    async def read() -> bytes:
        (n,) = _HLEN.unpack(await reader.readexactly(2))
        if n > MAX_HANDSHAKE_MESSAGE:
            raise HandshakeError("handshake message too long")
        return hs.read(await reader.readexactly(n))

    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while not hs.done:
                if hs.my_turn:
                    await write()
                else:
                    await read()
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, OSError) as exc:
        raise HandshakeError(f"handshake failed: {exc or type(exc).__name__}") from None
    send, receive = hs.split()
    assert hs.rs is not None
    return send, receive, hs.rs


class Link:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        send: CipherState,
        receive: CipherState,
        remote: bytes,
        *,
        endpoint: str,
        inbound: bool,
        control_rate: float = 2000.0,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._send = send
        self._receive = receive
        self.remote = remote
        self.endpoint = endpoint
        self.inbound = inbound
        self.stats = LinkStats()
        self.bucket = TokenBucket(control_rate, 2 * control_rate)
        self.connected_at = time.time()
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._corked: list[bytes] = []  # frames written this loop iteration: one syscall for all of them
        self._corked_bytes = 0

    def __str__(self) -> str:
        return self.endpoint

    def __repr__(self) -> str:
        return f"Link({self.endpoint}, {self.remote.hex()[:12]})"

    def send(self, packet: bytes, sealed: bytes = b"", *, droppable: bool = False) -> bool:
        """Encrypt `packet`, authenticate `sealed` (end-to-end ciphertext that follows it), queue both.

        False if the link is gone or (droppable) its buffer is full.
        """
        transport = self.writer.transport
        if transport.is_closing():
            return False
        if droppable and transport.get_write_buffer_size() + self._corked_bytes > WRITE_BUFFER_LIMIT:
            self.stats.dropped += 1
            return False
        head = self._send.encrypt(sealed, packet)
        if self._send.n % REKEY_FRAMES == 0:
            self._send.rekey()
        n = 2 + len(head) + len(sealed)
        if n >= CORK_BELOW:  # big frames go at once, so the receiver decrypts while we encrypt the next
            if self._corked:
                self._flush()
            self.writer.write(b"".join((_FRAME.pack(n, len(head)), head, sealed)))
        else:
            if not self._corked:
                self._loop.call_soon(self._flush)
            self._corked += (_FRAME.pack(n, len(head)), head, sealed)
            self._corked_bytes += n + 4
        self.stats.tx_packets += 1
        self.stats.tx_bytes += n + 4
        return True

    def _flush(self) -> None:
        if not self._corked:
            return
        data = b"".join(self._corked)
        self._corked.clear()
        self._corked_bytes = 0
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    async def run(self, on_packet: Callable[[Link, bytes, bytes], None]) -> None:
        """Read frames until EOF or a broken frame, handing each (packet, sealed part) to `on_packet`."""
        reader = self.reader
        try:
            while True:
                n, h = _FRAME.unpack(await reader.readexactly(_FRAME.size))
                if n > MAX_FRAME or not 16 <= h <= n - 2:
                    raise LinkClosed(f"frame lengths {n}/{h} out of range")
                head = await reader.readexactly(h)
                sealed = await reader.readexactly(n - 2 - h) if n - 2 > h else b""
                try:
                    packet = self._receive.decrypt(sealed, head)
                except HandshakeError:
                    raise LinkClosed("frame failed authentication") from None
                if self._receive.n % REKEY_FRAMES == 0:
                    self._receive.rekey()
                self.stats.rx_packets += 1
                self.stats.rx_bytes += n + 4
                on_packet(self, packet, sealed)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, LinkClosed):
            return
        finally:
            self.close()

    def close(self) -> None:
        if not self.writer.transport.is_closing():
            self.writer.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def to_json(self) -> dict[str, object]:
        """Mycelium's PeerStats shape, plus Hero's counters."""
        proto, _, addr = self.endpoint.partition("://")
        return {
            "endpoint": {"proto": proto, "addr": {"socket": addr}},
            "type": "inbound" if self.inbound else "static",
            "connectionState": "alive",
            "txBytes": self.stats.tx_bytes,
            "rxBytes": self.stats.rx_bytes,
            "txPackets": self.stats.tx_packets,
            "rxPackets": self.stats.rx_packets,
            "dropped": self.stats.dropped,
            "publicKey": self.remote.hex(),
        }
