"""The ask-another-agent skill between two users of one node, through the runtime and the node's overlay: an
allowed question is answered and the answer arrives as a message; without the owner's consent it is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hero.chat.entry import HistoryEntry
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
