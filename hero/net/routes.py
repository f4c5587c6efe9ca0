"""What the router (`routing.py`) works with: its settings and counters, routes, what it knows of each neighbour,
seqno order, and the check of an announcement (its /64 and its origin's signature, each checked once)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from hero.identity import overlay_address
from hero.net.address import verify
from hero.net.wire import Update, update_signed_bytes

Peer = Hashable
Subnet = bytes  # the 8 leading bytes of a /64
HYSTERESIS = 10
MAX_METRIC = 0xFFFE


def seqno_newer(a: int, b: int) -> bool:
    """a is newer than b in 16-bit modular order."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


@dataclass
class RouterConfig:
    hello_interval_s: float = 0.5
    dead_after_s: float = 1.5  # three missed hellos
    update_interval_s: float = 60.0
    hold_factor: float = 3.5
    seqno_bump_min_s: float = 1.0
    request_dedup_s: float = 2.0


@dataclass
class RouterStats:
    bad_signature: int = 0
    bad_subnet: int = 0
    infeasible: int = 0
    seqno_requests_sent: int = 0
    seqno_bumps: int = 0
    updates_sent: int = 0
    hellos_sent: int = 0
    tlvs_sent: int = 0
    packets_sent: int = 0


class Verified:
    """Signatures and key-derived subnets already checked (a simulation shares one among its routers)."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self.signatures: set[bytes] = set()
        self.subnets: dict[bytes, bytes] = {}

    def add(self, key: bytes) -> None:
        if len(self.signatures) >= self.LIMIT:
            self.signatures.clear()
        self.signatures.add(key)
        if len(self.subnets) >= self.LIMIT:
            self.subnets.clear()

    def valid(self, update: Update, stats: RouterStats) -> bool:
        """The subnet is the router key's own /64 (Mycelium's check) and, unless retracted, the origin signed it."""
        public = update.router_id[:32]
        subnet = self.subnets.get(public)
        if subnet is None:
            subnet = self.subnets[public] = overlay_address(public).packed[:8]
        if update.plen != 64 or update.prefix[:8] != subnet:
            stats.bad_subnet += 1
            return False
        if update.retraction:
            return True
        key = update.signature + update.router_id + update.seqno.to_bytes(2, "big")
        if key in self.signatures:
            return True
        if not verify(public, update_signed_bytes(64, update.prefix, update.router_id, update.seqno),
                      update.signature):
            stats.bad_signature += 1
            return False
        self.add(key)
        return True


@dataclass
class PeerState:
    """A neighbour as the router sees it: its link cost (static + measured round trip) and its hellos."""

    static_cost: int
    added: float
    hello_seqno: int = 0
    next_hello: float = 0.0
    sent: dict[int, float] = field(default_factory=dict)
    last_ihu: float | None = None
    rtt_ms: float | None = None

    @property
    def cost(self) -> int:
        return self.static_cost + (round(self.rtt_ms) if self.rtt_ms is not None else 1000)


@dataclass
class Route:
    subnet: Subnet
    peer: Peer
    router_id: bytes
    seqno: int
    advertised: int
    signature: bytes
    expires: float
    feasible: bool = True
