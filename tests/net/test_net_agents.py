"""An agent on node A answers a message sent from node B over the overlay (and strangers are refused)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path

import httpx

from agents import assistant
from hero.runtime.agent import Agent
from hero.runtime.events import Event, OverlayMessage, Reply
from hero.store.qss import QSS
from tests.conftest import add_user, free_port, history, make_config, make_node, new_agent, operator_token, serving
from tests.doubles import ScriptedLLM
from tests.net.helpers import start_node, wait_api


class Echo(Agent):
    """Keeps nothing, so accepting at once is honest; answers an overlay message with what it got."""

    async def handle(self, event: Event, reply: Reply) -> None:
        reply.accept()
        if isinstance(event, OverlayMessage):
            reply.write(f"agent {self.ctx.agent_id[:8]} got: {event.text}")


async def test_agent_on_a_answers_a_message_from_b(tmp_path: Path) -> None:
    config = make_config(tmp_path, overlay="on", overlay_port=free_port(), overlay_api=f"127.0.0.1:{free_port()}",
                         overlay_tun="off")
    config.data_dir.mkdir(parents=True)
    alice = add_user(config.data_dir, "alice")
    bob = add_user(config.data_dir, "bob")
    b = start_node(tmp_path, "b", [config.overlay_port])
    try:
        wait_api(b)
        (config.data_dir / "overlay-allow.json").write_text(json.dumps({alice["agent_id"]: [b.public]}))
        async with serving(replace(config), agent_factory=Echo) as parts:
            assert parts.overlay is not None
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(400):  # b learns alice's agent record as the link comes up, before its routes
                    if (await client.get(b.api + "/api/v1/admin/routes/selected")).json():
                        break
                    await asyncio.sleep(0.05)
                r = await client.post(b.api + "/api/v1/messages", params={"reply_timeout": 10}, json={
                    "dst": {"pk": alice["agent_id"]}, "topic": base64.b64encode(b"chat").decode(),
                    "payload": base64.b64encode(b"hello agent").decode()})
                assert r.status_code == 200, r.text
                answer = base64.b64decode(r.json()["payload"]).decode()
                assert answer == f"agent {alice['agent_id'][:8]} got: hello agent"
                assert r.json()["srcPk"] == parts.overlay.node.identity.public.hex()
                # bob's agent has no allow-list entry: the message is refused, bob's agent never wakes
                r = await client.post(b.api + "/api/v1/messages", params={"reply_timeout": 2}, json={
                    "dst": {"pk": bob["agent_id"]}, "payload": base64.b64encode(b"let me in").decode()})
                assert r.status_code == 408
                assert parts.overlay.agents.refused >= 1 and not parts.node.is_active(bob["agent_id"])
                base = f"http://127.0.0.1:{config.port}"
                op = {"Authorization": f"Bearer {operator_token(config.data_dir)}"}
                net = (await client.get(base + "/api/node/net", headers=op)).json()
                assert net["nodeIp"] == str(parts.overlay.node.identity.address) and net["peers"]
                assert (await client.get(base + "/api/node/net",
                                         headers={"Authorization": f"Bearer {alice['token']}"})).status_code == 403
    finally:
        b.stop()


async def test_the_assistant_keeps_an_answer_to_its_own_message_and_does_not_answer_it(store: QSS) -> None:
    llm = ScriptedLLM(["an answer"])
    node = make_node(store, assistant.create, llm=llm, idle_after_s=60)
    agent = new_agent()
    answer = OverlayMessage("m1", "ab" * 32, "400::1", b"", b"bob says hi back", src_agent="cd" * 32, reply=True)
    reply = await node.deliver(agent, answer)
    assert await reply.text() == "" and not llm.prompts  # nothing goes back, the model is not asked
    asked = await node.deliver(agent, OverlayMessage("m2", "ab" * 32, "400::1", b"", b"a question"))
    assert await asked.text() == "an answer"
    entries = await history(node, agent)
    await node.aclose()
    assert [(e.kind, e.role) for e in entries] == [("overlay", "user"), ("overlay", "user"), ("overlay", "assistant")]
