"""The ask-another-agent skill between two users, of one node (through the runtime) and of two nodes (over the
overlay): an allowed question is answered and the answer arrives as a message; without the owner's consent it is
refused."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from hero.chat.entry import HistoryEntry
from hero.identity import NodeKeys
from hero.net.address import Identity
from hero.runtime.events import ChatMessage
from tests.conftest import add_user, free_port, make_config, serving


async def say(node, agent_id: str, text: str) -> str:  # type: ignore[no-untyped-def]
    reply = await node.deliver(agent_id, ChatMessage(text))
    return (await asyncio.wait_for(reply.text(), 60)).strip()


async def next_answer(node, agent_id: str) -> str:  # type: ignore[no-untyped-def]
    with node.subscribe(agent_id, HistoryEntry) as live:
        while True:
            entry = await asyncio.wait_for(live.get(), 60)
            if entry.role == "assistant" and entry.kind == "overlay":
                return str(entry.content)


async def test_ask_another_agent_with_consent_and_refused_without(tmp_path: Path) -> None:
    config = make_config(tmp_path, overlay="on", overlay_tun="off", overlay_port=free_port(),
                         overlay_api=f"127.0.0.1:{free_port()}")
    async with serving(config) as parts:
        node = parts.node
        alice, bob, carol = (add_user(config.data_dir, n)["agent_id"] for n in ("alice", "bob", "carol"))
        assert await say(node, bob, f"/ask allow {alice}") == f"Agent {alice[:12]}… may now ask me questions."
        waiting = asyncio.ensure_future(next_answer(node, alice))
        sent = await say(node, alice, f"/ask {bob} what colour is the sky?")
        assert sent == f"Asked agent {bob[:12]}…; its answer will come as a message."
        answer = await waiting
        assert answer.startswith(f"Answer from agent {bob[:12]}…: ") and len(answer) > len("Answer from agent")
        assert "may not answer" not in answer
        waiting = asyncio.ensure_future(next_answer(node, carol))
        await say(node, carol, f"ask {bob} what is alice's secret?")
        refused = await waiting
        assert f"I may not answer agent {carol[:12]}…: my owner has not allowed it" in refused
        asked = [e.content for e in await parts.chat.entries(bob) if e.kind == "overlay"]
        assert any(f"[agent {alice[:12]}… asked] what colour is the sky?" in c for c in asked)


def overlay_key(data_dir: Path) -> str:
    return Identity(bytes(NodeKeys.load_or_create(data_dir).overlay)).public.hex()


async def test_ask_an_agent_on_another_node_over_the_overlay(tmp_path: Path) -> None:
    a_port = free_port()
    config_a = make_config(tmp_path / "a", overlay="on", overlay_tun="off", overlay_port=a_port,
                           overlay_api=f"127.0.0.1:{free_port()}")
    config_b = make_config(tmp_path / "b", overlay="on", overlay_tun="off", overlay_port=free_port(), overlay_api="",
                           overlay_peers=f"tcp://127.0.0.1:{a_port}")
    for config in (config_a, config_b):
        config.data_dir.mkdir(parents=True)
    alice, carol, dave = (add_user(config_a.data_dir, n)["agent_id"] for n in ("alice", "carol", "dave"))
    bob = add_user(config_b.data_dir, "bob")["agent_id"]
    # node B lets node A reach bob at all (the operator's allow-list); bob's owner decides who may ask (the skill)
    (config_b.data_dir / "overlay-allow.json").write_text(json.dumps({bob: [overlay_key(config_a.data_dir)]}))
    async with serving(replace(config_a)) as a, serving(replace(config_b)) as b:
        assert a.overlay is not None and b.overlay is not None
        deadline = asyncio.get_running_loop().time() + 15
        while len(a.overlay.node.router.selected) < 1:
            assert asyncio.get_running_loop().time() < deadline, "the nodes never connected"
            await asyncio.sleep(0.05)
        assert await say(b.node, bob, f"/ask allow {alice}") == f"Agent {alice[:12]}… may now ask me questions."

        waiting = asyncio.ensure_future(next_answer(a.node, alice))
        sent = await say(a.node, alice, f"/ask {bob} what colour is the sky?")
        assert sent == f"Asked agent {bob[:12]}…; its answer will come as a message."
        answer = await waiting
        assert answer.startswith(f"Answer from agent {bob[:12]}…: ") and "may not answer" not in answer
        asked = [e.content for e in await b.chat.entries(bob) if e.kind == "overlay"]
        assert any(f"[agent {alice[:12]}… asked] what colour is the sky?" in c for c in asked)

        waiting = asyncio.ensure_future(next_answer(a.node, carol))  # carol's node may reach bob; bob's owner says no
        await say(a.node, carol, f"/ask {bob} what is alice's secret?")
        assert f"I may not answer agent {carol[:12]}…: my owner has not allowed it" in await waiting

        # an answer is let in only for an agent that asked that node: one pushed to dave, who never asked, is not
        refused = a.overlay.agents.refused
        b.overlay.node.messages.push(bytes.fromhex(a.overlay.public_key), b"hero/ask", b"hi dave", reply_to="00" * 8,
                                     agent=bytes.fromhex(dave), src_agent=bytes.fromhex(bob))
        while a.overlay.agents.refused == refused:
            assert asyncio.get_running_loop().time() < deadline + 30, "the unasked answer was not refused"
            await asyncio.sleep(0.05)
