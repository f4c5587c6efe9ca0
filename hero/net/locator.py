"""Which node hosts an agent: signed records, published by the host and found on demand.

A node publishes a record (records.py: vouched for by its hosting authority and
carrying the owner's grant to it) for each agent it hosts when the
overlay starts, every `RECORD_TTL_S / 3` and whenever someone asks; records
flood to every node that has not seen them. An agent added while the node
runs (a user created with `hero user add`) is found on demand: the node that
wants it floods a query (deduplicated by nonce, at most `QUERY_HOPS` far) and
the host, which checks its own registry (`is_local`) at that moment, answers
with a fresh record. A node sends at most `QUERIES_PER_S` queries (a burst of
twice that) and, for `NOT_FOUND_S` after a query found nothing, answers "not
found" at once: an agent sending to made-up ids cannot flood the overlay.
An agent without a grant is not published (its owner never said this node may
host it): it is reached by the node's key and its topic only. Nothing here polls.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from hero.net.address import Identity
from hero.net.link import TokenBucket
from hero.net.records import AgentDirectory, AgentRecord, HostAuthority, check_grant
from hero.net.wire import AgentQuery, AgentRecordTlv, Tlv

RECORD_TTL_S = 600.0
QUERY_HOPS = 16
SEEN_QUERIES = 4096
QUERIES_PER_S = 10.0
NOT_FOUND_S = 5.0

Flood = Callable[[Tlv, object | None], None]  # (TLV, the link not to send it back on)
log = logging.getLogger("hero.net")


class AgentLocator:
    def __init__(self, identity: Identity, flood: Flood) -> None:
        self.identity = identity
        self._flood = flood
        self.directory = AgentDirectory()
        self.published: set[bytes] = set()
        self.is_local: Callable[[bytes], bool] = lambda agent: agent in self.published
        self.authority: HostAuthority | None = None  # who vouches for our records (set by the node's owner)
        self.grant_of: Callable[[bytes], bytes | None] = lambda agent: None  # the owner's grant to `authority`
        self.ungranted: set[bytes] = set()  # hosted here, but not published: no grant from their owner
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # query nonces
        self._finding: dict[bytes, asyncio.Future[bytes]] = {}
        self._missing: dict[bytes, float] = {}  # agent -> until when a find answers None at once
        self._queries = TokenBucket(QUERIES_PER_S, 2 * QUERIES_PER_S)
        self.queries_answered = 0
        self.queries_refused = 0

    def publish(self, agent: bytes) -> None:
        self.published.add(agent)
        grant = self.grant_of(agent)
        if self.authority is None or grant is None or not check_grant(agent, self.authority.public, grant):
            if agent not in self.ungranted:
                self.ungranted.add(agent)
                # One warning, not one per agent (a node may hold thousands); the count is in /api/node/net.
                level = logging.WARNING if len(self.ungranted) == 1 else logging.DEBUG
                log.log(level, "overlay: agent %s is not published: its owner has granted this node no hosting "
                        "(it is reached by this node's key and its topic only; agentsUngranted in /api/node/net "
                        "counts all such agents)", agent.hex()[:16])
            return
        self.ungranted.discard(agent)
        record = AgentRecord.issue(self.identity.public, self.authority, agent, grant, RECORD_TTL_S)
        self.directory.add(record)
        self._learnt(record)
        self._flood(AgentRecordTlv(record.encode()), None)

    def refresh(self) -> None:
        """Re-publish every agent still hosted here (the rest lapse when their records expire)."""
        self.directory.prune()
        for agent in list(self.published):
            if self.is_local(agent):
                self.publish(agent)
            else:
                self.published.discard(agent)

    def resolve(self, agent: bytes) -> bytes | None:
        if self.is_local(agent):
            return self.identity.public
        return self.directory.resolve(agent)

    async def find(self, agent: bytes, timeout_s: float) -> bytes | None:
        """The key of the node hosting `agent`: known, or asked for across the overlay (None if nobody answers)."""
        known = self.resolve(agent)
        if known is not None:
            return known
        now = time.monotonic()
        if self._missing.get(agent, 0.0) > now:
            return None
        waiter = self._finding.get(agent)
        if waiter is None:
            if not self._queries.take():
                self.queries_refused += 1
                return None
            waiter = self._finding[agent] = asyncio.get_running_loop().create_future()
            nonce = secrets.token_bytes(8)
            self._remember(nonce)
            self._flood(AgentQuery(agent, nonce, QUERY_HOPS), None)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if len(self._missing) >= SEEN_QUERIES:
                self._missing = {a: t for a, t in self._missing.items() if t > now}
            self._missing[agent] = time.monotonic() + NOT_FOUND_S
            return None
        finally:
            if self._finding.get(agent) is waiter and not waiter.done():
                del self._finding[agent]
                waiter.cancel()

    # from neighbours

    def on_record(self, tlv: AgentRecordTlv, link: object) -> None:
        record = self.directory.learn(tlv.raw)
        if record is not None:
            self._learnt(record)
            self._flood(tlv, link)

    def on_query(self, query: AgentQuery, link: object) -> None:
        if query.nonce in self._seen:
            return
        self._remember(query.nonce)
        if self.is_local(query.agent):
            self.queries_answered += 1
            self.publish(query.agent)
        elif query.hops > 1:
            self._flood(AgentQuery(query.agent, query.nonce, query.hops - 1), link)

    def _learnt(self, record: AgentRecord) -> None:
        self._missing.pop(record.agent, None)
        waiter = self._finding.pop(record.agent, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(record.node)

    def _remember(self, nonce: bytes) -> None:
        self._seen[nonce] = None
        while len(self._seen) > SEEN_QUERIES:
            self._seen.popitem(last=False)
