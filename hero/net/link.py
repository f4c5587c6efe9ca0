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

The socket is read by a buffered protocol: the kernel copies into one
buffer and frames are opened where they lie, as they arrive (no stream
reader between, one copy of the sealed part per frame).
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
BUFFER_BYTES = 1 << 19  # the receive buffer: several frames, so a read syscall brings many
REKEY_FRAMES = 1 << 16
HANDSHAKE_TIMEOUT_S = 5.0
CORK_BELOW = 8192  # smaller frames (acks, control) wait for the end of the loop iteration and leave together
WRITE_BUFFER_LIMIT = 8 << 20  # past this, data packets are dropped (the message layer retransmits)
_FRAME = struct.Struct(">IH")  # bytes after the u32; head ciphertext bytes
_HLEN = struct.Struct(">H")


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


class LinkProtocol(asyncio.BufferedProtocol):
    """One TCP connection's bytes: handshake messages while it opens, then frames for its `Link`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray(BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are _buf[_start:_end]
        self._end = 0
        self._waiter: asyncio.Future[None] | None = None
        self.link: Link | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < MAX_FRAME:  # keep room for a whole frame: move the tail to the front
            n = self._end - self._start
            self._buf[:n] = bytes(self._view[self._start : self._end])
            self._start, self._end = 0, n
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self.link is not None:
            self._start = self.link._frames(self._view, self._start, self._end)
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def read_exactly(self, n: int) -> bytes:
        """For the handshake: the next `n` bytes, once they are here."""
        while self._end - self._start < n:
            if self.closed.done():
                raise ConnectionResetError("connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._view[self._start : self._start + n])
        self._start += n
        return data

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def handshake(
    protocol: LinkProtocol,
    identity: Identity,
    *,
    initiator: bool,
    pattern: str = "XXhfs",
) -> tuple[CipherState, CipherState, bytes]:
    """Run the link handshake; returns (send, receive, remote static key). Raises HandshakeError."""
    hs = Handshake(pattern, initiator=initiator, static_secret=identity.secret, prologue=PROLOGUE)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while not hs.done:
                if hs.my_turn:
                    message = hs.write()
                    protocol.write(_HLEN.pack(len(message)) + message)
                else:
                    (n,) = _HLEN.unpack(await protocol.read_exactly(2))
                    if n > MAX_HANDSHAKE_MESSAGE:
                        raise HandshakeError("handshake message too long")
                    hs.read(await protocol.read_exactly(n))
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise HandshakeError(f"handshake failed: {exc or type(exc).__name__}") from None
    send, receive = hs.split()
    assert hs.rs is not None
    return send, receive, hs.rs


class Link:
    def __init__(
        self,
        protocol: LinkProtocol,
        send: CipherState,
        receive: CipherState,
        remote: bytes,
        *,
        endpoint: str,
        inbound: bool,
        control_rate: float = 2000.0,
    ) -> None:
        assert protocol.transport is not None
        self.protocol = protocol
        self.transport = protocol.transport
        self._send = send
        self._receive = receive
        self.remote = remote
        self.endpoint = endpoint
        self.inbound = inbound
        self.stats = LinkStats()
        self.bucket = TokenBucket(control_rate, 2 * control_rate)
        self.connected_at = time.time()
        self._loop = asyncio.get_running_loop()
        self.closed = protocol.closed
        self._on_packet: Callable[[Link, bytes, bytes], None] | None = None
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
        transport = self.transport
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
            transport.write(b"".join((_FRAME.pack(n, len(head)), head, sealed)))
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
        if not self.transport.is_closing():
            self.transport.write(data)

    def start(self, on_packet: Callable[[Link, bytes, bytes], None]) -> None:
        """Hand every (packet, sealed part) to `on_packet` from now on, beginning with what is buffered."""
        self._on_packet = on_packet
        self.protocol.link = self
        protocol = self.protocol
        protocol._start = self._frames(protocol._view, protocol._start, protocol._end)

    def _frames(self, view: memoryview, start: int, end: int) -> int:
        """Open the whole frames in view[start:end]; returns where the unread rest begins."""
        on_packet = self._on_packet
        assert on_packet is not None
        while end - start >= 6 and not self.transport.is_closing():
            n, h = _FRAME.unpack_from(view, start)
            if n > MAX_FRAME or not 16 <= h <= n - 2:
                self.close()  # the stream is out of step: nothing after this can be trusted
                break
            if end - start < 4 + n:
                break
            head = bytes(view[start + 6 : start + 6 + h])
            sealed = bytes(view[start + 6 + h : start + 4 + n])
            start += 4 + n
            try:
                packet = self._receive.decrypt(sealed, head)
            except HandshakeError:
                self.close()  # a forged or damaged frame
                break
            if self._receive.n % REKEY_FRAMES == 0:
                self._receive.rekey()
            self.stats.rx_packets += 1
            self.stats.rx_bytes += n + 4
            on_packet(self, packet, sealed)
        return start

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

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
