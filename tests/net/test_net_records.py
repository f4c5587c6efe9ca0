"""Hosting an agent on the overlay is authorised by its owner: a node the owner did not grant cannot claim it."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import nacl.signing
import pytest

from hero.identity import UserKey
from hero.net.address import Identity
from hero.net.locator import AgentLocator
from hero.net.records import AgentDirectory, AgentRecord, HostAuthority, sign_grant
from hero.net.wire import AgentRecordTlv
from tests.net.test_net_security import nodes


async def test_a_node_cannot_claim_to_host_an_agent_its_owner_never_granted() -> None:
    owner = UserKey.generate()
    victim = bytes.fromhex(owner.agent_id)
    async with nodes(3) as (honest, relay, forger):
        forger.agents.publish(victim)  # "send me this agent's messages", with no grant at all
        mine = HostAuthority(nacl.signing.SigningKey.generate())
        forged = AgentRecord.issue(forger.identity.public, mine, victim, b"\x01" * 64, 60)
        forger.agents.directory.add(forged)
        forger._flood(AgentRecordTlv(forged.encode()), None)  # with a made-up grant
        await asyncio.sleep(0.3)  # records flood at once over the links
        assert honest.agents.resolve(victim) is None and relay.agents.resolve(victim) is None
        assert relay.agents.directory.rejected >= 1
        assert await honest.agents.find(victim, 0.5) is None  # nor when asked for

        # the owner grants a cluster's authority; its node publishes, and everyone finds the agent there
        cluster = HostAuthority(nacl.signing.SigningKey.generate())
        honest.agents.authority = cluster
        honest.agents.grant_of = lambda agent: sign_grant(owner.signing, cluster.public) if agent == victim else None
        honest.agents.publish(victim)
        await asyncio.sleep(0.3)
        assert relay.agents.resolve(victim) == honest.identity.public

        # the forger copies that grant into a record of its own: it cannot make the cluster's signature
        stolen = AgentRecord.issue(forger.identity.public, mine, victim, sign_grant(owner.signing, cluster.public), 60)
        copied = AgentRecord(victim, forger.identity.public, stolen.issued_ms + 5000, stolen.expires_ms + 5000,
                             cluster.public, stolen.grant, stolen.vouch)
        for record in (stolen, copied):
            assert AgentDirectory().learn(record.encode()) is None
        assert relay.agents.resolve(victim) == honest.identity.public


def test_records_of_one_authority_from_any_of_its_nodes() -> None:
    owner = UserKey.generate()
    agent = bytes.fromhex(owner.agent_id)
    cluster = HostAuthority(nacl.signing.SigningKey.generate())
    grant = sign_grant(owner.signing, cluster.public)
    a, b = Identity.generate(), Identity.generate()
    directory = AgentDirectory()
    first = AgentRecord.issue(a.public, cluster, agent, grant, 60, now=time.time())
    moved = AgentRecord.issue(b.public, cluster, agent, grant, 60, now=time.time() + 5)
    assert directory.add(first) and directory.learn(moved.encode()) == moved  # the agent moved within the cluster
    assert directory.learn(first.encode()) is None  # the older record loses


def test_agents_without_a_hosting_grant_cost_the_log_one_line_not_one_each(caplog: pytest.LogCaptureFixture) -> None:
    # A node with 2,000 stored agents whose owners granted it no hosting logged 2,000 warnings at start.
    finder = AgentLocator(Identity.generate(), lambda tlv, link: None)
    with caplog.at_level(logging.INFO, logger="hero.net"):
        for _ in range(500):
            finder.publish(os.urandom(32))
        finder.refresh()
    lines = [r for r in caplog.records if "not published" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines][:3]
    assert len(finder.ungranted) == 500  # each is still known, and counted where the operator looks
