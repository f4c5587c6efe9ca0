"""End-to-end sessions between two overlay nodes: what relays see is addresses and ciphertext.

Mycelium seals every packet with the raw static X25519 secret (no forward
secrecy, random nonces, no replay protection). Hero runs a one-round-trip
Noise KKhfs handshake per pair of nodes (both static keys known: the
destination's from its route or `pk`, the initiator's sent beside the first
message and checked against its source address; ephemeral X25519 mixed with
ML-KEM-768, as on links), then seals data with ChaCha20-Poly1305 under counter
nonces with the packet's addresses and session header as AAD, drops replays
with a sliding window, and re-keys with a fresh handshake after
`rekey_after_s` or `rekey_after_packets`. No timers: a handshake is
(re)started by the next send that needs it.

This is the only encryption user data gets: a data packet leaves as a small
head (the session header) and the sealed body, which links authenticate but
do not encrypt again (see link.py).
"""

from __future__ import annotations

import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.bindings as sodium
import nacl.exceptions

from hero.identity import overlay_address
from hero.net.address import Identity
from hero.net.handshake import Handshake, HandshakeError

T_INIT = 1
T_ACCEPT = 2
T_DATA = 3
KIND_IPV6 = 0
KIND_MESSAGE = 1
_DATA_HDR = struct.Struct(">BIQ")  # type, receiver index, counter
_INIT_HDR = struct.Struct(">BI")
_ACCEPT_HDR = struct.Struct(">BII")
OVERHEAD = _DATA_HDR.size + 1 + 16  # header, kind, tag
PATTERN = "KKhfs"
_KINDS = [bytes((k,)) for k in range(256)]


class ReplayWindow:
    """Accepts each counter once, within `size` of the highest seen (RFC 6479's idea, as an int bitmap)."""

    __slots__ = ("bits", "size", "top")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.top = -1
        self.bits = 0

    def fresh(self, n: int) -> bool:
        if n > self.top:
            return True
        back = self.top - n
        return back < self.size and not (self.bits >> back) & 1

    def mark(self, n: int) -> None:
        if n > self.top:
            shift = n - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = n
        else:
            self.bits |= 1 << (self.top - n)


@dataclass
class SessionStats:
    sessions_started: int = 0
    handshakes_rejected: int = 0
    replayed: int = 0
    bad_packets: int = 0
    unknown_session: int = 0
    queued_dropped: int = 0


@dataclass(eq=False)
class _Session:
    peer: bytes  # the other node's static public key
    peer_addr: bytes
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    created: float
    counter: int = 0
    window: ReplayWindow = field(default_factory=ReplayWindow)


@dataclass(eq=False)
class _Pending:
    handshake: Handshake
    peer: bytes
    started: float
    queue: deque[bytes] = field(default_factory=deque)  # plaintexts (kind byte, body)


class Sessions:
    def __init__(
        self,
        identity: Identity,
        send_raw: Callable[[bytes, bytes, bytes], None],
        deliver: Callable[[bytes, bytes, int, memoryview], None],
        *,
        rekey_after_s: float = 120.0,
        rekey_after_packets: int = 1 << 24,
        max_sessions: int = 10_000,
        max_queued: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.addr = identity.address.packed
        self._send_raw = send_raw  # (dst address, payload head, sealed body)
        self._deliver = deliver  # (peer public key, peer address, kind, body)
        self.rekey_after_s = rekey_after_s
        self.rekey_after_packets = rekey_after_packets
        self.max_sessions = max_sessions
        self.max_queued = max_queued
        self.clock = clock
        self.stats = SessionStats()
        self._by_index: dict[int, _Session] = {}
        self._current: dict[bytes, _Session] = {}
        self._pending: dict[int, _Pending] = {}
        self._pending_by_peer: dict[bytes, int] = {}
        self._last_init: dict[bytes, int] = {}  # peer -> newest INIT timestamp accepted (INIT replay guard)

    # sending

    def send(self, peer: bytes, kind: int, *body: bytes | memoryview) -> None:
        """Seal `kind` and the concatenated `body` for `peer` (queued while a handshake runs; best effort)."""
        plain = b"".join((_KINDS[kind], *body))
        now = self.clock()
        session = self._current.get(peer)
        stale = session is not None and (
            now - session.created > self.rekey_after_s or session.counter >= self.rekey_after_packets
        )
        if session is None or stale:
            pending = self._handshake(peer, now)
            if session is None or now - session.created > 2 * self.rekey_after_s:
                if len(pending.queue) >= self.max_queued:
                    self.stats.queued_dropped += 1
                    return
                pending.queue.append(plain)
                return
        assert session is not None
        self._seal(session, plain)

    def _seal(self, s: _Session, plain: bytes) -> None:
        header = _DATA_HDR.pack(T_DATA, s.remote_index, s.counter)
        aad = self.addr + s.peer_addr + header
        nonce = b"\0\0\0\0" + s.counter.to_bytes(8, "little")
        s.counter += 1
        self._send_raw(s.peer_addr, header, sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, aad, nonce,
                                                                                              s.send_key))

    def _handshake(self, peer: bytes, now: float) -> _Pending:
        index = self._pending_by_peer.get(peer)
        if index is not None:
            pending = self._pending[index]
            if now - pending.started < 1.0:
                return pending
            del self._pending[index]  # lost: start again, keep what was queued
            queue = pending.queue
        else:
            queue = deque()
        peer_addr = overlay_address(peer).packed
        hs = Handshake(PATTERN, initiator=True, static_secret=self.identity.secret, remote_static=peer,
                       prologue=self.addr + peer_addr)
        index = self._new_index()
        pending = _Pending(hs, peer, now, queue)
        self._pending[index] = pending
        self._pending_by_peer[peer] = index
        message = hs.write(int(time.time() * 1000).to_bytes(8, "big"))
        self._send_raw(peer_addr, _INIT_HDR.pack(T_INIT, index) + self.identity.public + message, b"")
        return pending

    def _new_index(self) -> int:
        while True:
            index = secrets.randbits(32)
            if index and index not in self._by_index and index not in self._pending:
                return index

    # receiving

    def receive(self, src: bytes, dst: bytes, payload: bytes, sealed: bytes = b"") -> None:
        """One payload addressed to this node (head, sealed body); anything that fails is counted and dropped."""
        if not payload:
            self.stats.bad_packets += 1
            return
        kind = payload[0]
        try:
            if kind == T_DATA:
                self._on_data(src, dst, payload, sealed)
            elif sealed:
                self.stats.bad_packets += 1
            elif kind == T_INIT:
                self._on_init(src, payload)
            elif kind == T_ACCEPT:
                self._on_accept(src, payload)
            else:
                self.stats.bad_packets += 1
        except (HandshakeError, struct.error, ValueError):
            self.stats.handshakes_rejected += 1

    def _on_data(self, src: bytes, dst: bytes, payload: bytes, sealed: bytes) -> None:
        if len(payload) != _DATA_HDR.size or len(sealed) < 17:
            self.stats.bad_packets += 1
            return
        _, index, counter = _DATA_HDR.unpack(payload)
        s = self._by_index.get(index)
        if s is None or s.peer_addr != src:
            self.stats.unknown_session += 1
            return
        if not s.window.fresh(counter):
            self.stats.replayed += 1
            return
        nonce = b"\0\0\0\0" + counter.to_bytes(8, "little")
        try:
            plain = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(sealed, src + dst + payload, nonce, s.recv_key)
        except (nacl.exceptions.CryptoError, ValueError):
            self.stats.bad_packets += 1
            return
        s.window.mark(counter)
        if not plain:
            self.stats.bad_packets += 1
            return
        self._deliver(s.peer, src, plain[0], memoryview(plain)[1:])

    def _on_init(self, src: bytes, payload: bytes) -> None:
        _, remote_index = _INIT_HDR.unpack_from(payload)
        peer = payload[_INIT_HDR.size : _INIT_HDR.size + 32]
        if len(peer) != 32 or overlay_address(peer).packed != src:
            self.stats.handshakes_rejected += 1  # the claimed key does not own the source address
            return
        hs = Handshake(PATTERN, initiator=False, static_secret=self.identity.secret, remote_static=peer,
                       prologue=src + self.addr)
        stamp = int.from_bytes(hs.read(payload[_INIT_HDR.size + 32 :]), "big")
        if stamp <= self._last_init.get(peer, 0):
            self.stats.replayed += 1
            return
        self._last_init[peer] = stamp
        index = self._new_index()
        message = hs.write(b"")
        send, recv = hs.split()
        assert send.k is not None and recv.k is not None
        self._install(_Session(peer, src, index, remote_index, send.k, recv.k, self.clock()))
        self._send_raw(src, _ACCEPT_HDR.pack(T_ACCEPT, index, remote_index) + message, b"")

    def _on_accept(self, src: bytes, payload: bytes) -> None:
        _, remote_index, local_index = _ACCEPT_HDR.unpack_from(payload)
        pending = self._pending.get(local_index)
        if pending is None or overlay_address(pending.peer).packed != src:
            self.stats.unknown_session += 1
            return
        pending.handshake.read(payload[_ACCEPT_HDR.size :])
        send, recv = pending.handshake.split()
        assert send.k is not None and recv.k is not None
        del self._pending[local_index]
        self._pending_by_peer.pop(pending.peer, None)
        session = _Session(pending.peer, src, local_index, remote_index, send.k, recv.k, self.clock())
        self._install(session)
        while pending.queue:
            self._seal(session, pending.queue.popleft())

    def _install(self, session: _Session) -> None:
        self.stats.sessions_started += 1
        now = session.created
        # sessions older than two re-key periods are gone (in-flight packets of the last one still open)
        for index, old in list(self._by_index.items()):
            if now - old.created > 2 * self.rekey_after_s + 5:
                del self._by_index[index]
        if len(self._by_index) >= self.max_sessions:
            oldest = min(self._by_index.values(), key=lambda s: s.created)
            del self._by_index[oldest.local_index]
        self._by_index[session.local_index] = session
        self._current[session.peer] = session

    def forget(self, peer: bytes) -> None:
        for index in [i for i, s in self._by_index.items() if s.peer == peer]:
            del self._by_index[index]
        self._current.pop(peer, None)
