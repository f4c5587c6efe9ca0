"""The cluster's directory: leases that expire, granted atomically across nodes, in one named Ray actor.

Every node of a cluster calls one detached, named actor (`hero-directory-<cluster>`), so a lease is
granted by one table (`leases.py`) and one clock: two nodes asking for the same agent at once get one
grant and one `LeaseHeld` naming the holder. Each node renews all of its leases in one call every
`ttl_s / 3`; that call is also its heartbeat (what it reports of itself: address, watts, headroom,
agents) and brings back the cluster's view and the durable timers it should take over. A node that
stops renewing is gone after `ttl_s`: its leases lapse, and its agents are handed to the live nodes
(each takes those that hash to it), which take over their durable timers, so they fire there.

Ray restarts the actor if its process dies; its memory is gone, so a restarted directory grants
epochs above every earlier one (a generation counter kept in Ray's KV store) and for one lease term
grants nothing new while the live owners renew, and so tell it, what they hold. The store's epoch fence
stays the authority: a node that lost a lease can never commit over the new owner.

`DirectoryService` is a plain class (tested without Ray); `RayDirectory` is the node's client of the
actor. Ray is imported only here and only when a node is given a cluster address.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hero.errors import LeaseHeld, Unavailable
from hero.runtime.directory import LeaseTable
from hero.seams.directory import LeaseGrant, LeaseOwner, Renewal

log = logging.getLogger("hero.cluster")

NAMESPACE = "hero"
GENERATION_KEY = b"hero/directory/generation"
CALL_TIMEOUT_S = 10.0  # a directory call that takes longer than this is treated as the cluster being unreachable
NONCES_MAX = 100_000


@dataclass
class NodeEntry:
    node_id: str
    info: dict[str, Any]
    until: float
    joined: float = field(default_factory=time.time)


def actor_name(cluster_id: str) -> str:
    return f"hero-directory-{cluster_id[:16]}"


def host_name(node_id: str) -> str:
    """The Ray actor name of the host actor of node `node_id`."""
    return f"hero-node-{node_id}"


def rendezvous(agent_id: str, nodes: Iterable[str]) -> str | None:
    """The node an agent hashes to among `nodes` (highest random weight): stable as other nodes come and go."""
    best, best_weight = None, b""
    for node in nodes:
        weight = hashlib.blake2b(f"{agent_id}/{node}".encode(), digest_size=8).digest()
        if weight > best_weight:
            best, best_weight = node, weight
    return best


class DirectoryService:
    """Leases, the live nodes, sign-in nonces and timer hand-offs of one cluster. Its methods run one at a
    time between awaits (one asyncio loop), so each is atomic."""

    def __init__(self, *, generation: int = 1, recovery_s: float = 0.0) -> None:
        self.generation = generation
        self.table = LeaseTable(epoch_base=(generation - 1) << 32)
        self.nodes: dict[str, NodeEntry] = {}
        self.orphans: dict[str, None] = {}  # agents whose durable timers need a node (their holder is gone)
        self.nonces: dict[str, float] = {}  # sign-in challenge nonce -> its expiry (unix)
        self.recovering_until = time.monotonic() + recovery_s if generation > 1 else 0.0

    # leases

    def acquire(self, agent_id: str, owner: str, floor: int, ttl_s: float, timers: bool = False) -> dict[str, Any]:
        """{"epoch": e} for the new holder, {"held_by": node, "epoch": e} if another holds it, or
        {"recovering_s": s} while a restarted directory waits for the owners to renew."""
        self._sweep()
        if owner not in self.nodes:
            return {"unknown_node": True}
        recovering = self.recovering_until - time.monotonic()
        if recovering > 0 and self.table.live(agent_id) is None:
            return {"recovering_s": recovering}
        try:
            grant = self.table.acquire(agent_id, owner, floor=floor, ttl_s=ttl_s, timers=timers)
        except LeaseHeld as exc:
            holder = self.table.live(agent_id)
            return {"held_by": exc.owner, "epoch": holder.epoch if holder else 0}
        self.orphans.pop(agent_id, None)
        return {"epoch": grant.epoch, "lapsed": grant.lapsed}

    def renew(
        self, owner: str, info: dict[str, Any], held: Mapping[str, int], timers: Sequence[str], ttl_s: float
    ) -> dict[str, Any]:
        """The heartbeat: extend `owner`'s leases, note what it says of itself; returns the leases it lost,
        the timer-holding agents it should take over and the live nodes."""
        now = time.monotonic()
        entry = self.nodes.get(owner)
        if entry is None:
            entry = self.nodes[owner] = NodeEntry(owner, info, now + ttl_s)
            log.info("node %s joined the cluster", owner[:12])
        entry.info, entry.until = info, now + ttl_s
        self._sweep()
        lost = self.table.renew(owner, held, ttl_s=ttl_s, timers=timers)
        adopt = [a for a in self.orphans if rendezvous(a, self._adopters()) == owner]
        return {"lost": lost, "adopt": adopt, "nodes": self.view(), "generation": self.generation}

    def release(self, agent_id: str, owner: str, epoch: int, orphan: bool = False) -> bool:
        """Drop a lease; with `orphan`, its agent's timers are handed to another node (the owner is leaving
        or over its budget)."""
        released = self.table.release(agent_id, owner, epoch)
        if released and orphan:
            self.orphans[agent_id] = None
        return released

    def owner(self, agent_id: str) -> dict[str, Any] | None:
        """The live lease of an agent: its node, epoch, seconds left and where to reach the node."""
        self._sweep()
        grant = self.table.live(agent_id)
        if grant is None:
            return None
        node = self.nodes.get(grant.owner)
        return {
            "node_id": grant.owner, "epoch": grant.epoch, "remaining_s": grant.until - time.monotonic(),
            "url": node.info.get("url") if node else None,
        }

    def leave(self, owner: str) -> int:
        """A node stops (gracefully): its remaining leases go, its timers to the others."""
        self.nodes.pop(owner, None)
        return self._evict(owner)

    def evict(self, owner: str) -> int:
        """A node found dead (its host actor is gone): drop it now rather than when its leases lapse."""
        if self.nodes.pop(owner, None) is None:
            return 0
        log.warning("node %s is gone; its agents wake elsewhere", owner[:12])
        return self._evict(owner)

    def _evict(self, owner: str) -> int:
        """Drop `owner`'s leases; each agent goes to a live node, which takes over its timers if it has any
        (the owner may have set one since it last said so)."""
        grants = self.table.evict(owner)
        self.orphans.update(dict.fromkeys(grants))
        return len(grants)

    def _sweep(self) -> None:
        """Nodes that stopped renewing are gone: their leases lapse, their timers go to the others."""
        now = time.monotonic()
        for node_id in [n for n, e in self.nodes.items() if e.until <= now]:
            del self.nodes[node_id]
            log.warning("node %s stopped renewing; its agents wake elsewhere", node_id[:12])
            self._evict(node_id)

    def _adopters(self) -> list[str]:
        """Nodes that may take over timers: live and not over their power budget (all live ones if none is)."""
        live = list(self.nodes)
        under = [n for n in live if not self.nodes[n].info.get("over_budget")]
        return under or live

    # the cluster

    def view(self) -> list[dict[str, Any]]:
        """Every live node: its id, what it reports (url, watts, headroom, capacity…) and its agents."""
        self._sweep()
        return [
            {**e.info, "node_id": e.node_id, "agents": sorted(self.table.held_by(e.node_id)), "joined": e.joined}
            for e in sorted(self.nodes.values(), key=lambda e: e.joined)
        ]

    def spend_nonce(self, nonce: str, expires: float) -> bool:
        """Mark a sign-in challenge's nonce used, cluster-wide; False if any node already did."""
        now = time.time()
        if len(self.nonces) >= NONCES_MAX:
            self.nonces = {n: e for n, e in self.nonces.items() if e > now}
        if nonce in self.nonces:
            return False
        self.nonces[nonce] = expires
        return True


class RayDirectory:
    """A node's client of the cluster directory actor: the runtime's `LeaseDirectory` over Ray.

    Each renewal carries what `info()` says of this node (its heartbeat) and brings back the live
    nodes (`nodes`, for placement and the gateway).
    """

    def __init__(self, handle: Any, *, ttl_s: float) -> None:
        self.handle = handle
        self._ttl_s = ttl_s
        self.info: Callable[[], dict[str, Any]] = dict
        self.nodes: list[dict[str, Any]] = []
        self.generation = 0
        self._renewed: asyncio.Event | None = None  # set (and replaced) at each renewal: `nodes` is new

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @classmethod
    def connect(cls, cluster_id: str, *, ttl_s: float) -> RayDirectory:
        """Find the cluster's directory actor, creating it if this node is the first (Ray must be initialised)."""
        import ray

        actor = ray.remote(_DirectoryActor).options(
            name=actor_name(cluster_id), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=64,
        )
        return cls(actor.remote(recovery_s=ttl_s), ttl_s=ttl_s)

    async def call(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """One call of the directory actor; Unavailable (never a hang) if the cluster does not answer."""
        import ray

        try:
            return await asyncio.wait_for(getattr(self.handle, method).remote(*args), timeout_s)
        except TimeoutError:
            raise Unavailable(f"the cluster directory did not answer within {timeout_s:.0f}s") from None
        except (ray.exceptions.RayError, ConnectionError) as exc:
            raise Unavailable(f"cannot reach the cluster directory: {type(exc).__name__}") from None

    async def acquire(self, agent_id: str, owner: str, *, floor: int = 0, timers: bool = False) -> LeaseGrant:
        answer = await self.call("acquire", agent_id, owner, floor, self._ttl_s, timers)
        return LeaseGrant(epoch_of(answer, agent_id), bool(answer.get("lapsed")))

    async def renew(self, owner: str, held: Mapping[str, int], timers: Collection[str]) -> Renewal:
        answer = await self.call("renew", owner, self.info(), dict(held), list(timers), self._ttl_s)
        self.nodes = list(answer["nodes"])
        self.generation = int(answer.get("generation", 0))
        if self._renewed is not None:
            self._renewed.set()
            self._renewed = None
        return Renewal(lost=list(answer["lost"]), adopt=list(answer["adopt"]))

    async def renewed(self) -> None:
        """Returns after this node's next renewal (when `nodes` is the cluster's view again)."""
        if self._renewed is None:
            self._renewed = asyncio.Event()
        await self._renewed.wait()

    async def release(self, agent_id: str, owner: str, epoch: int, *, orphan: bool = False) -> None:
        await self.call("release", agent_id, owner, epoch, orphan)

    async def owner(self, agent_id: str) -> LeaseOwner | None:
        found = await self.call("owner", agent_id)
        if found is None:
            return None
        return LeaseOwner(str(found["node_id"]), int(found["epoch"]), float(found["remaining_s"]), found.get("url"))

    async def leave(self, owner: str) -> None:
        await self.call("leave", owner)

    async def suspect(self, node_id: str) -> bool:
        """This node could not reach `node_id`: True if the directory found it gone (its leases dropped now)."""
        return bool(await self.call("suspect", node_id))

    async def spend_nonce(self, nonce: str, expires: float) -> bool:
        return bool(await self.call("spend_nonce", nonce, expires))

    async def broadcast(self, method: str, args: list[Any], *, skip: str | None = None) -> int:
        return int(await self.call("broadcast", method, args, skip))


def epoch_of(answer: Mapping[str, Any], agent_id: str) -> int:
    """The epoch in a directory's answer to `acquire`, or the error it stands for."""
    if "epoch" in answer and "held_by" not in answer:
        return int(answer["epoch"])
    if "held_by" in answer:
        holder = str(answer["held_by"])
        raise LeaseHeld(f"agent {agent_id[:12]}… is hosted by node {holder[:12]}…", owner=holder)
    if "recovering_s" in answer:
        raise Unavailable(f"the cluster directory is restarting; new leases in {answer['recovering_s']:.0f}s")
    raise Unavailable("this node is not (or no longer) a member of the cluster: it has not renewed in time")


class _DirectoryActor:
    """The Ray actor around `DirectoryService`: the generation counter lives in Ray's KV store, so a
    restarted actor grants epochs above every earlier one."""

    def __init__(self, recovery_s: float) -> None:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(GENERATION_KEY, namespace=NAMESPACE)
        generation = int(raw or 0) + 1
        internal_kv._internal_kv_put(GENERATION_KEY, str(generation).encode(), overwrite=True, namespace=NAMESPACE)
        self.service = DirectoryService(generation=generation, recovery_s=recovery_s)
        if generation > 1:
            log.warning("cluster directory restarted (generation %d): no new leases for %.0fs", generation, recovery_s)

    async def acquire(self, agent_id: str, owner: str, floor: int, ttl_s: float, timers: bool) -> dict[str, Any]:
        return self.service.acquire(agent_id, owner, floor, ttl_s, timers)

    async def renew(
        self, owner: str, info: dict[str, Any], held: dict[str, int], timers: list[str], ttl_s: float
    ) -> dict[str, Any]:
        return self.service.renew(owner, info, held, timers, ttl_s)

    async def release(self, agent_id: str, owner: str, epoch: int, orphan: bool) -> bool:
        return self.service.release(agent_id, owner, epoch, orphan)

    async def owner(self, agent_id: str) -> dict[str, Any] | None:
        return self.service.owner(agent_id)

    async def leave(self, owner: str) -> int:
        return self.service.leave(owner)

    async def nodes(self) -> list[dict[str, Any]]:
        return self.service.view()

    async def spend_nonce(self, nonce: str, expires: float) -> bool:
        return self.service.spend_nonce(nonce, expires)

    async def suspect(self, node_id: str) -> bool:
        """Another node could not reach `node_id`: if its host actor is gone, evict it now. True if evicted."""
        import ray

        if node_id not in self.service.nodes:
            return True
        try:
            host = ray.get_actor(host_name(node_id), namespace=NAMESPACE)
            await asyncio.wait_for(host.ping.remote(), 2.0)
        except TimeoutError:
            return False  # slow, not known dead: its leases lapse if it stops renewing
        except (ValueError, ray.exceptions.RayError):
            return self.service.evict(node_id) >= 0
        return False

    async def broadcast(self, method: str, args: list[Any], skip: str | None = None) -> int:
        """Call `method(*args)` on every live node's host actor (but `skip`), waiting up to 5 s; how many did."""
        import ray

        calls = []
        for node_id in list(self.service.nodes):
            if node_id == skip:
                continue
            try:
                host = ray.get_actor(host_name(node_id), namespace=NAMESPACE)
            except ValueError:
                continue
            calls.append(getattr(host, method).remote(*args))
        if not calls:
            return 0
        waits = [asyncio.ensure_future(c) for c in calls]
        try:
            done, _ = await asyncio.wait(waits, timeout=5.0)
        finally:  # a host slower than 5 s is not waited for: its wait is cancelled, not left behind
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return sum(1 for d in done if not d.cancelled() and not d.exception())
