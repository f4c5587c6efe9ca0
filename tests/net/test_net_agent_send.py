"""Agents send through the runtime: an agent on node A reaches an agent on node B by its id or by B's
overlay address, B's agent wakes from hibernation to answer, and a user added while B runs is found."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx

from hero.identity import NodeKeys
from hero.net.address import Identity
from hero.runtime.events import Ping
from tests.conftest import add_user, free_port, make_config, serving
from tests.net.helpers import Courier, ask


async def until(check: Callable[[], bool], limit_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def overlay_key(data_dir: Path) -> str:
    return Identity(bytes(NodeKeys.load_or_create(data_dir).overlay)).public.hex()


async def test_an_agent_on_a_asks_a_hibernated_agent_on_b_and_gets_its_answer(tmp_path: Path) -> None:
    a_port, a_api = free_port(), f"127.0.0.1:{free_port()}"
    config_a = make_config(tmp_path / "a", overlay="on", overlay_port=a_port, overlay_api=a_api, overlay_tun="off")
    config_b = make_config(tmp_path / "b", overlay="on", overlay_port=free_port(), overlay_api="", overlay_tun="off",
                           overlay_peers=f"tcp://127.0.0.1:{a_port}", idle_after_s=0.3)
    for config in (config_a, config_b):
        config.data_dir.mkdir(parents=True)
    alice = add_user(config_a.data_dir, "alice")["agent_id"]
    bob = add_user(config_b.data_dir, "bob")["agent_id"]
    allow = config_b.data_dir / "overlay-allow.json"
    allow.write_text(json.dumps({bob: [overlay_key(config_a.data_dir)]}))
    async with serving(replace(config_a), agent_factory=Courier) as a, \
            serving(replace(config_b), agent_factory=Courier) as b:
        await until(lambda: len(a.overlay.node.router.selected) == 1)
        await (await b.node.deliver(bob, Ping())).text()  # bob has lived, and is put to sleep
        await until(lambda: not b.node.is_active(bob))

        # by agent id: A finds B from bob's record; bob wakes, answers, and sees which agent asked
        answer = await ask(a.node, alice, bob, "hello bob")
        assert answer == f"{bob[:8]} got 'hello bob' from {alice[:8]}"
        # by B's overlay address and the agent there
        b_ip = str(b.overlay.node.identity.address)
        assert await ask(a.node, alice, b_ip, "again", agent=bob) == f"{bob[:8]} got 'again' from {alice[:8]}"

        # a user added while B runs is found on demand (no restart): B answers A's query with a record,
        # whether A's Mycelium API or one of A's agents asks
        carol = add_user(config_b.data_dir, "carol")["agent_id"]
        allow.write_text(json.dumps({bob: [overlay_key(config_a.data_dir)], carol: ["*"]}))
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(f"http://{a_api}/api/v1/messages", params={"reply_timeout": 10}, json={
                "dst": {"pk": carol}, "payload": base64.b64encode(b"hi from the API").decode()})
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["payload"]).decode() == f"{carol[:8]} got 'hi from the API' from a node"
        assert b.overlay.node.agents.queries_answered == 1
        assert await ask(a.node, alice, carol, "hi carol") == f"{carol[:8]} got 'hi carol' from {alice[:8]}"

        # nobody hosts this agent: a clear error, after a bounded wait; and the agent can still send after
        stranger = Identity.generate().public.hex()
        assert (await ask(a.node, alice, stranger, "anyone?")).startswith("error: no node or agent")
        # an agent on A that is not on B's allow-list is refused: bob never answers it
        dave = add_user(config_a.data_dir, "dave")["agent_id"]
        allow.write_text(json.dumps({carol: ["*"]}))
        assert await ask(a.node, dave, bob, "let me in", wait_s=1) == "no answer"
        assert b.overlay.agents.refused >= 1
