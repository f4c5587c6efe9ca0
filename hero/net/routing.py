"""Babel-style distance-vector routing (Mycelium's `router.rs` shape), as a clock-driven state machine.

The router does no I/O and owns no task: the node (or the simulation) feeds it
received TLVs and the current time, calls `tick(now)` at `next_deadline()`,
and it answers through two callbacks: `send(peer, tlvs)` and `dead(peer)`.
So the same code runs over real TCP links and in a 500-node simulation.

Hero's changes from Mycelium: every announcement carries its origin's
signature over (subnet, router id, seqno) and is dropped if it fails (a
forged route for someone else's /64 never enters the table); hellos are
frequent and a peer is dead after `dead_after_s` without an IHU, so a silent
link failure moves traffic within ~2 s (a hard failure moves it at once:
fallbacks are kept, not recomputed); TLVs are batched into one packet per peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from hero.net.address import Identity
from hero.net.routes import (
    HYSTERESIS,
    MAX_METRIC,
    Peer,
    PeerState,
    Route,
    RouterConfig,
    RouterStats,
    Subnet,
    Verified,
    seqno_newer,
)
from hero.net.wire import (
    METRIC_INFINITE,
    Hello,
    Ihu,
    RouteRequest,
    SeqnoRequest,
    Tlv,
    Update,
    update_signed_bytes,
)


class Router:
    def __init__(
        self,
        identity: Identity,
        send: Callable[[Peer, list[Tlv]], None],
        dead: Callable[[Peer], None],
        *,
        config: RouterConfig | None = None,
        verified: Verified | None = None,
        now: float = 0.0,
    ) -> None:
        self.identity = identity
        self.config = config or RouterConfig()
        self.stats = RouterStats()
        self._send = send
        self._dead = dead
        self._verified = verified if verified is not None else Verified()
        self.own = identity.subnet.network_address.packed[:8]
        self.router_id = identity.router_id.encode()
        self.seqno = 0
        self._own_sig = self._sign_own()
        self._last_bump = -1e9
        self._bump_due: float | None = None
        self.peers: dict[Peer, PeerState] = {}
        self.routes: dict[Subnet, dict[Peer, Route]] = {}
        self.selected: dict[Subnet, Route] = {}
        self._announced: dict[Subnet, int] = {}  # metric of the last update sent for a selected route
        self.fd: dict[tuple[Subnet, bytes], tuple[int, int]] = {}
        self._requests: dict[tuple[Subnet, int], float] = {}
        self._out: dict[Peer, list[Tlv]] = {}
        self._next_update = now
        self._next_expiry = float("inf")

    # peers

    def add_peer(self, peer: Peer, static_cost: int, now: float) -> None:
        """A new link: hello at once; the table follows the first IHU, when the link has a measured cost."""
        self.peers[peer] = PeerState(static_cost, now, next_hello=now)

    def remove_peer(self, peer: Peer, now: float) -> None:
        """A hard failure (EOF, reset, dead): its routes go at once and fallbacks take over."""
        if self.peers.pop(peer, None) is None:
            return
        for subnet in [s for s, by_peer in self.routes.items() if peer in by_peer]:
            del self.routes[subnet][peer]
            self._select(subnet, now)
        self.flush()

    def metric_to(self, peer: Peer) -> int:
        return self.peers[peer].cost

    # the data plane's question

    def next_hop(self, dst: bytes) -> Peer | None:
        route = self.selected.get(dst[:8])
        return route.peer if route is not None else None

    def public_key_of(self, dst: bytes) -> bytes | None:
        if dst[:8] == self.own:
            return self.identity.public
        route = self.selected.get(dst[:8])
        return route.router_id[:32] if route is not None else None

    def metric(self, route: Route) -> int:
        if route.advertised >= METRIC_INFINITE or route.peer not in self.peers:
            return METRIC_INFINITE
        return min(MAX_METRIC, route.advertised + self.peers[route.peer].cost)

    # input

    def receive(self, peer: Peer, tlvs: Sequence[Tlv], now: float) -> None:
        if peer not in self.peers:
            return
        for tlv in tlvs:
            if isinstance(tlv, Hello):
                self._queue(peer, Ihu(0, round(self.config.hello_interval_s * 100), tlv.seqno))
            elif isinstance(tlv, Ihu):
                self._on_ihu(peer, tlv, now)
            elif isinstance(tlv, Update):
                self._on_update(peer, tlv, now)
            elif isinstance(tlv, SeqnoRequest):
                self._on_seqno_request(peer, tlv, now)
            elif isinstance(tlv, RouteRequest):
                route = self.selected.get(tlv.prefix[:8])
                if tlv.prefix[:8] == self.own:
                    self._queue(peer, self._own_update())
                elif route is not None and route.peer != peer:
                    self._queue(peer, self._update_for(route))
        self.flush()

    def _on_ihu(self, peer: Peer, ihu: Ihu, now: float) -> None:
        state = self.peers[peer]
        sent = state.sent.pop(ihu.seqno, None)
        if sent is None:
            return
        state.last_ihu = now
        sample = (now - sent) * 1000.0
        old = state.cost
        first = state.rtt_ms is None
        state.rtt_ms = sample if state.rtt_ms is None else (9 * state.rtt_ms + sample) / 10
        if first:  # the link's cost is known: tell the neighbour everything we can reach
            self._queue(peer, self._own_update())
            for route in self.selected.values():
                if route.peer != peer:
                    self._queue(peer, self._update_for(route))
        if first or abs(state.cost - old) > HYSTERESIS:
            for subnet in [s for s, by in self.routes.items() if peer in by]:
                self._select(subnet, now)

    def _feasible(self, subnet: Subnet, router_id: bytes, seqno: int, advertised: int) -> bool:
        """Babel's feasibility condition: the metric the neighbour advertises (not ours through it, which
        adds the link's cost) must be below what we last announced for this seqno. Comparing our own
        metric made every refresh of the selected route look infeasible: a seqno request and a network-wide
        bump each time."""
        fd = self.fd.get((subnet, router_id))
        if fd is None or advertised >= METRIC_INFINITE:
            return True
        return seqno_newer(seqno, fd[0]) or (seqno == fd[0] and advertised < fd[1])

    def _on_update(self, peer: Peer, update: Update, now: float) -> None:
        subnet = update.prefix[:8]
        if not self._verified.valid(update, self.stats) or subnet == self.own:
            return
        by_peer = self.routes.setdefault(subnet, {})
        entry = by_peer.get(peer)
        feasible = self._feasible(subnet, update.router_id, update.seqno, update.metric)
        current = self.selected.get(subnet)
        if update.retraction:
            if entry is not None:
                del by_peer[peer]
        elif not feasible and current is not None and current.peer == peer:
            self.stats.infeasible += 1
            if current.router_id == update.router_id:
                fd = self.fd.get((subnet, update.router_id), (update.seqno, 0))
                self._request_seqno(subnet, update.router_id, (fd[0] + 1) & 0xFFFF, [peer], now)
                return
            del by_peer[peer]  # another source took over through this neighbour: unselect
        else:
            hold = self.config.update_interval_s * self.config.hold_factor
            expires = now + hold if feasible or entry is None else entry.expires
            if not feasible:
                self.stats.infeasible += 1
            by_peer[peer] = Route(subnet, peer, update.router_id, update.seqno, update.metric, update.signature,
                                  expires, feasible)
            self._next_expiry = min(self._next_expiry, expires)
        if not by_peer:
            self.routes.pop(subnet, None)
        self._select(subnet, now)

    def _on_seqno_request(self, peer: Peer, req: SeqnoRequest, now: float) -> None:
        subnet = req.prefix[:8]
        if subnet == self.own:
            if seqno_newer(req.seqno, self.seqno):
                self._bump(now)
            else:
                self._queue(peer, self._own_update())
            return
        route = self.selected.get(subnet)
        if route is not None and route.router_id == req.router_id and not seqno_newer(req.seqno, route.seqno):
            self._queue(peer, self._update_for(route))
            return
        if req.hop_count <= 1:
            return
        targets = [route.peer] if route is not None else [p for p in self.routes.get(subnet, {}) if p != peer]
        forwarded = SeqnoRequest(64, req.seqno, req.hop_count - 1, req.router_id, req.prefix)
        key = (subnet, req.seqno)
        if self._requests.get(key, -1e9) + self.config.request_dedup_s > now:
            return
        self._requests[key] = now
        for target in targets:
            if target != peer:
                self._queue(target, forwarded)

    # selection and announcements

    def _select(self, subnet: Subnet, now: float) -> None:
        """Pick the best feasible route (feasibility against today's FD: loop freedom), with hysteresis."""
        current = self.selected.get(subnet)
        by_peer = self.routes.get(subnet, {})
        best: Route | None = None
        best_metric = METRIC_INFINITE
        for route in by_peer.values():
            metric = self.metric(route)
            if metric >= METRIC_INFINITE:
                continue
            sticky = current is not None and route.peer == current.peer and route.router_id == current.router_id
            if not (sticky or self._feasible(subnet, route.router_id, route.seqno, route.advertised)):
                continue
            if metric < best_metric:
                best, best_metric = route, metric
        if current is not None and best is not None and best.peer != current.peer:
            kept = by_peer.get(current.peer)
            if kept is not None and kept.router_id == current.router_id:
                kept_metric = self.metric(kept)
                if kept_metric < METRIC_INFINITE and best_metric + HYSTERESIS >= kept_metric:
                    best, best_metric = kept, kept_metric
        if best is None:
            if current is not None:
                del self.selected[subnet]
                self._announced.pop(subnet, None)
                self._broadcast(self._retraction(current), except_peer=None)
                fd = self.fd.get((subnet, current.router_id), (current.seqno, 0))
                peers = list(self.routes.get(subnet, {})) or list(self.peers)
                self._request_seqno(subnet, current.router_id, (fd[0] + 1) & 0xFFFF, peers, now)
            elif self.routes.get(subnet):
                route = next(iter(self.routes[subnet].values()))
                fd = self.fd.get((subnet, route.router_id), (route.seqno, 0))
                self._request_seqno(subnet, route.router_id, (fd[0] + 1) & 0xFFFF, list(self.routes[subnet]), now)
            return
        self.selected[subnet] = best
        changed = (
            current is None
            or current.router_id != best.router_id
            or current.seqno != best.seqno
            or current.peer != best.peer
            or abs(self._announced.get(subnet, METRIC_INFINITE) - best_metric) > HYSTERESIS
        )
        if changed:
            self._announced[subnet] = best_metric
            self._broadcast(self._update_for(best), except_peer=best.peer)

    def _request_seqno(self, subnet: Subnet, router_id: bytes, seqno: int, peers: list[Peer], now: float) -> None:
        key = (subnet, seqno)
        if self._requests.get(key, -1e9) + self.config.request_dedup_s > now:
            return
        self._requests[key] = now
        prefix = subnet + b"\0" * 8
        for peer in peers:
            if peer in self.peers:
                self.stats.seqno_requests_sent += 1
                self._queue(peer, SeqnoRequest(64, seqno, 64, router_id, prefix))

    def _bump(self, now: float) -> None:
        if now < self._last_bump + self.config.seqno_bump_min_s:  # the same sum as _bump_due: no float drift
            self._bump_due = self._last_bump + self.config.seqno_bump_min_s
            return
        self._bump_due = None
        self._last_bump = now
        self.seqno = (self.seqno + 1) & 0xFFFF
        self._own_sig = self._sign_own()
        self.stats.seqno_bumps += 1
        self._broadcast(self._own_update(), except_peer=None)

    def _sign_own(self) -> bytes:
        prefix = self.own + b"\0" * 8
        return self.identity.sign(update_signed_bytes(64, prefix, self.router_id, self.seqno))

    def _own_update(self) -> Update:
        interval = min(0xFFFF, round(self.config.update_interval_s * 100))
        return Update(64, interval, self.seqno, 0, self.own + b"\0" * 8, self.router_id, self._own_sig)

    def _update_for(self, route: Route) -> Update:
        interval = min(0xFFFF, round(self.config.update_interval_s * 100))
        metric = self.metric(route)
        return Update(64, interval, route.seqno, metric, route.subnet + b"\0" * 8, route.router_id, route.signature)

    def _retraction(self, route: Route) -> Update:
        return Update(64, 0, route.seqno, METRIC_INFINITE, route.subnet + b"\0" * 8, route.router_id, b"")

    def _broadcast(self, tlv: Tlv, *, except_peer: Peer | None) -> None:
        for peer in self.peers:
            if peer != except_peer:
                self._queue(peer, tlv)

    def _queue(self, peer: Peer, tlv: Tlv) -> None:
        if isinstance(tlv, Update) and not tlv.retraction and tlv.metric < METRIC_INFINITE:
            key = (tlv.prefix[:8], tlv.router_id)
            fd = self.fd.get(key)
            if fd is None or seqno_newer(tlv.seqno, fd[0]) or (tlv.seqno == fd[0] and tlv.metric < fd[1]):
                self.fd[key] = (tlv.seqno, tlv.metric)
            self.stats.updates_sent += 1
        self._out.setdefault(peer, []).append(tlv)

    def flush(self) -> None:
        out, self._out = self._out, {}
        for peer, tlvs in out.items():
            if peer in self.peers:
                self.stats.tlvs_sent += len(tlvs)
                self.stats.packets_sent += 1
                self._send(peer, tlvs)

    # time

    def tick(self, now: float) -> None:
        cfg = self.config
        for peer, state in list(self.peers.items()):
            heard = state.last_ihu if state.last_ihu is not None else state.added
            if now - heard > cfg.dead_after_s:
                self._dead(peer)
                self.remove_peer(peer, now)
                continue
            if now >= state.next_hello:
                state.hello_seqno = (state.hello_seqno + 1) & 0xFFFF
                state.sent[state.hello_seqno] = now
                if len(state.sent) > 16:
                    state.sent.pop(next(iter(state.sent)))
                state.next_hello = now + cfg.hello_interval_s
                self.stats.hellos_sent += 1
                self._queue(peer, Hello(state.hello_seqno, round(cfg.hello_interval_s * 100)))
        if now >= self._next_update:
            self._next_update = now + cfg.update_interval_s
            self._broadcast(self._own_update(), except_peer=None)
            for route in self.selected.values():
                self._broadcast(self._update_for(route), except_peer=route.peer)
        if self._bump_due is not None and now >= self._bump_due:
            self._bump(now)
        if now >= self._next_expiry:
            self._expire(now)
        if len(self._requests) > 1024:
            self._requests = {k: t for k, t in self._requests.items() if t + cfg.request_dedup_s > now}
        self.flush()

    def _expire(self, now: float) -> None:
        soonest = float("inf")
        for subnet in list(self.routes):
            by_peer = self.routes[subnet]
            stale = [p for p, r in by_peer.items() if r.expires <= now]
            for peer in stale:
                del by_peer[peer]
            soonest = min([soonest, *(r.expires for r in by_peer.values())])
            if stale:
                if not by_peer:
                    del self.routes[subnet]
                self._select(subnet, now)
        self._next_expiry = soonest

    def next_deadline(self) -> float:
        times = [self._next_update, self._next_expiry]
        for state in self.peers.values():
            heard = state.last_ihu if state.last_ihu is not None else state.added
            times += (state.next_hello, heard + self.config.dead_after_s + 1e-3)
        if self._bump_due is not None:
            times.append(self._bump_due)
        return min(times)

    # views

    def table(self, *, fallback: bool = False) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for subnet, by_peer in self.routes.items():
            selected = self.selected.get(subnet)
            for route in by_peer.values():
                if (route is selected) == fallback:
                    continue
                metric = self.metric(route)
                rows.append({
                    "subnet": f"{ipaddress.IPv6Address(subnet + bytes(8))}/64",
                    "nextHop": str(route.peer),
                    "metric": "infinite" if metric >= METRIC_INFINITE else metric,
                    "seqno": route.seqno,
                })
        return rows
