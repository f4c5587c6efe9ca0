"""An in-process simulated network that runs the real `Router` for 100–500 nodes in virtual time.

Links have a one-way latency and a loss rate; a link can be cut hard (both ends
see EOF at once) or silently (packets vanish; only the dead timer notices).
Events run from one heap in virtual time, so a simulated minute of a
500-node mesh takes seconds. Measures what the benchmark reports:
convergence time, route stretch against Dijkstra's optimum over the same link
costs, reroute time after a cut, and control packets per node per minute.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hero.net.address import Identity
from hero.net.routes import Peer, RouterConfig, Verified
from hero.net.routing import Router
from hero.net.wire import Hello, Ihu, Tlv, Update, encode_control

STATIC_COST = 10


@dataclass
class SimLink:
    latency_s: float
    loss: float = 0.0
    up: bool = True
    silent_down: bool = False


@dataclass
class SimStats:
    packets: int = 0
    bytes: int = 0
    hello_tlvs: int = 0
    update_tlvs: int = 0
    other_tlvs: int = 0
    lost: int = 0


@dataclass
class Simulation:
    n: int
    links: dict[tuple[int, int], SimLink]
    config: RouterConfig = field(default_factory=RouterConfig)
    seed: int = 0
    measure_bytes: bool = False

    def __post_init__(self) -> None:
        self.now = 0.0
        self.rng = random.Random(self.seed)
        self._heap: list[tuple[float, int, int, int, list[Tlv] | None]] = []
        self._seq = itertools.count()
        self._tick_at: list[float] = [float("inf")] * self.n
        self.stats = SimStats()
        verified = Verified()  # a signature is checked once per process: the result cannot differ
        self.identities = [Identity(self.rng.randbytes(32)) for _ in range(self.n)]
        self.routers = [
            Router(ident, self._sender(i), self._dead(i), config=self.config, verified=verified)
            for i, ident in enumerate(self.identities)
        ]
        self.subnet_index = {r.own: i for i, r in enumerate(self.routers)}

    # topology

    @classmethod
    def random_mesh(cls, n: int, *, degree: int = 4, latency_ms: tuple[float, float] = (2.0, 40.0),
                    loss: float = 0.0, seed: int = 0, config: RouterConfig | None = None) -> Simulation:
        """A ring (connected) plus random chords up to about `degree` links per node."""
        rng = random.Random(seed)
        edges: set[tuple[int, int]] = {(min(i, (i + 1) % n), max(i, (i + 1) % n)) for i in range(n)}
        while len(edges) < n * degree // 2:
            a, b = rng.randrange(n), rng.randrange(n)
            if a != b:
                edges.add((min(a, b), max(a, b)))
        links = {e: SimLink(rng.uniform(*latency_ms) / 1000.0, loss) for e in sorted(edges)}
        return cls(n, links, config or RouterConfig(), seed)

    def link(self, a: int, b: int) -> SimLink:
        return self.links[(min(a, b), max(a, b))]

    def start(self, *, jitter_s: float = 0.05) -> None:
        for (a, b), link in self.links.items():
            if link.up:
                self._push(self.rng.uniform(0, jitter_s), a, -1, b)  # a link comes up at both ends at once

    # events

    def _push(self, at: float, node: int, kind: int, arg: int, tlvs: list[Tlv] | None = None) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), node, kind * 100000 + arg if kind >= 0 else -1 - arg, tlvs))

    def _sender(self, i: int) -> Callable[[Peer, list[Tlv]], None]:
        def send(peer: Peer, tlvs: list[Tlv]) -> None:
            j = int(peer)  # type: ignore[call-overload]
            link = self.link(i, j)
            self.stats.packets += 1
            for t in tlvs:
                if isinstance(t, Hello | Ihu):
                    self.stats.hello_tlvs += 1
                elif isinstance(t, Update):
                    self.stats.update_tlvs += 1
                else:
                    self.stats.other_tlvs += 1
            if self.measure_bytes:
                self.stats.bytes += len(encode_control(tlvs))
            if not link.up or link.silent_down or (link.loss and self.rng.random() < link.loss):
                self.stats.lost += 1
                return
            self._push(self.now + link.latency_s, j, 1, i, tlvs)

        return send

    def _dead(self, i: int) -> Callable[[Peer], None]:
        def dead(peer: Peer) -> None:
            return None  # the router already dropped the peer; a real link would close here

        return dead

    def _touch(self, i: int) -> None:
        deadline = self.routers[i].next_deadline()
        at = max(deadline, self.now)
        if at < self._tick_at[i]:
            self._tick_at[i] = at
            self._push(at, i, 0, 0)

    def run_until(self, t_end: float, *, stop: object = None) -> float:
        """Run events up to `t_end`; with `stop` (a callable), return early once it says True."""
        check = stop if callable(stop) else None
        events = 0
        while self._heap and self._heap[0][0] <= t_end:
            events += 1
            at, _, node, code, tlvs = heapq.heappop(self._heap)
            self.now = at
            router = self.routers[node]
            if code < 0:
                peer = -1 - code
                if self.link(node, peer).up and peer not in router.peers:
                    self.routers[peer].add_peer(node, STATIC_COST, at)
                    router.add_peer(peer, STATIC_COST, at)
                    self._touch(peer)
            elif code < 100000:
                if self._tick_at[node] != at:
                    continue  # superseded by an earlier tick
                self._tick_at[node] = float("inf")
                router.tick(at)
            else:
                peer = code - 100000
                if self.link(node, peer).up and tlvs is not None:
                    router.receive(peer, tlvs, at)
            self._touch(node)
            if check is not None and events % 16 == 0 and check():
                return self.now
        self.now = max(self.now, t_end)
        return self.now

    # faults

    def cut(self, a: int, b: int, *, silent: bool = False) -> None:
        link = self.link(a, b)
        if silent:
            link.silent_down = True
            return
        link.up = False
        for x, y in ((a, b), (b, a)):
            self.routers[x].remove_peer(y, self.now)
            self._touch(x)

    # measures

    def converged(self) -> bool:
        want = self.n - 1
        return all(len(r.selected) == want for r in self.routers)

    def path(self, src: int, dst: int) -> list[int] | None:
        """Follow selected next hops from src to dst over live links; None on a loop or a hole."""
        target = self.routers[dst].own
        hops = [src]
        node = src
        while node != dst:
            route = self.routers[node].selected.get(target)
            if route is None:
                return None
            nxt = int(route.peer)  # type: ignore[call-overload]
            link = self.link(node, nxt)
            if not link.up or link.silent_down or nxt in hops:
                return None
            hops.append(nxt)
            node = nxt
        return hops

    def cost(self, a: int, b: int) -> float:
        return STATIC_COST + 2000.0 * self.link(a, b).latency_s

    def optimal(self, src: int) -> dict[int, float]:
        """Dijkstra over the same link costs the routers measure (static + RTT in ms)."""
        adj: dict[int, list[int]] = {}
        for (a, b), link in self.links.items():
            if link.up and not link.silent_down:
                adj.setdefault(a, []).append(b)
                adj.setdefault(b, []).append(a)
        dist = {src: 0.0}
        heap = [(0.0, src)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist.get(u, float("inf")):
                continue
            for v in adj.get(u, []):
                nd = d + self.cost(u, v)
                if nd < dist.get(v, float("inf")):
                    dist[v] = nd
                    heapq.heappush(heap, (nd, v))
        return dist

    def stretch(self, sources: list[int]) -> tuple[float, float]:
        """(mean, max) of path cost / optimal cost over every destination of the given sources."""
        ratios = []
        for src in sources:
            best = self.optimal(src)
            for dst in range(self.n):
                if dst == src:
                    continue
                hops = self.path(src, dst)
                if hops is None:
                    ratios.append(float("inf"))
                    continue
                cost = sum(self.cost(a, b) for a, b in itertools.pairwise(hops))
                ratios.append(cost / best[dst])
        return sum(ratios) / len(ratios), max(ratios)
