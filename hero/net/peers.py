"""Where links come from: static peers dialled with backoff and jitter, and a TCP listener.

Endpoints are Mycelium's `tcp://HOST:PORT` (IPv6 in brackets); unlike
Mycelium, HOST may be a hostname. A static peer is redialled after its link
drops: 0.1 s, doubling to 30 s, each wait jittered ±50 % (Mycelium redials
every 5 s with no backoff), and back to 0.1 s once a link has lived 10 s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hero.errors import BadRequest
from hero.net.handshake import HandshakeError
from hero.nursery import Nursery

log = logging.getLogger("hero.net")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0


@dataclass(frozen=True)
class Endpoint:
    proto: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, field: str = "endpoint") -> Endpoint:
        proto, sep, rest = text.partition("://")
        if not sep or proto != "tcp":
            raise BadRequest(f"endpoint {text!r} must be tcp://HOST:PORT (only tcp is supported)", field=field)
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]:")
        else:
            host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest(f"endpoint {text!r} must be tcp://HOST:PORT with a port 1..65535", field=field)
        return cls(proto, host, int(port))

    def __str__(self) -> str:
        try:
            is_v6 = ipaddress.ip_address(self.host).version == 6
        except ValueError:
            is_v6 = False
        host = f"[{self.host}]" if is_v6 else self.host
        return f"{self.proto}://{host}:{self.port}"


@dataclass
class StaticPeer:
    endpoint: Endpoint
    task: asyncio.Task[None] | None = None
    attempts: int = 0
    connected: bool = False
    last_error: str | None = None
    backoff_s: float = BACKOFF_MIN_S
    history: list[float] = field(default_factory=list)


Connect = Callable[[Endpoint], Awaitable[asyncio.Future[None]]]


class Dialer:
    """Keeps a link up to every static peer; `connect` returns a future that resolves when the link ends."""

    def __init__(self, connect: Connect, nursery: Nursery, *, rng: random.Random | None = None) -> None:
        self._connect = connect
        self._nursery = nursery
        self._rng = rng or random.Random()
        self.peers: dict[str, StaticPeer] = {}

    def add(self, endpoint: Endpoint) -> bool:
        key = str(endpoint)
        if key in self.peers:
            return False
        peer = StaticPeer(endpoint)
        self.peers[key] = peer
        peer.task = self._nursery.spawn(self._keep(peer), name=f"dial:{key}")
        return True

    def remove(self, key: str) -> bool:
        peer = self.peers.pop(key, None)
        if peer is None:
            return False
        if peer.task is not None:
            peer.task.cancel()
        return True

    async def _keep(self, peer: StaticPeer) -> None:
        while True:
            peer.attempts += 1
            started = time.monotonic()
            try:
                closed = await self._connect(peer.endpoint)
            except (OSError, TimeoutError, HandshakeError) as exc:
                peer.last_error = str(exc) or type(exc).__name__
                log.debug("dial %s failed: %s", peer.endpoint, peer.last_error)
            else:
                peer.connected = True
                peer.last_error = None
                try:
                    await closed
                finally:
                    peer.connected = False
                if time.monotonic() - started > STABLE_AFTER_S:
                    peer.backoff_s = BACKOFF_MIN_S
            wait = peer.backoff_s * self._rng.uniform(0.5, 1.5)
            peer.history.append(wait)
            del peer.history[:-16]
            peer.backoff_s = min(BACKOFF_MAX_S, peer.backoff_s * 2)
            await asyncio.sleep(wait)

    def to_json(self) -> list[dict[str, object]]:
        return [
            {"endpoint": str(p.endpoint), "connected": p.connected, "attempts": p.attempts, "lastError": p.last_error,
             "backoffSeconds": round(p.backoff_s, 3)}
            for p in self.peers.values()
        ]
