"""External daemon mode: a Hero node rides a Mycelium daemon through its REST API. The daemon here is a Hero
overlay node (`hero net up`), whose API copies Mycelium's; a second one plays a Mycelium peer."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path

import httpx

from hero.net.overlay import agent_topic
from tests.conftest import add_user, make_config, operator_token, serving
from tests.net.helpers import Courier, ask, start_node, wait_api, wait_routes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_node_on_a_mycelium_daemon_answers_and_sends_through_its_api(tmp_path: Path) -> None:
    daemon = start_node(tmp_path, "daemon", [])
    peer = start_node(tmp_path, "peer", [daemon.port])
    try:
        for proc in (daemon, peer):
            wait_api(proc)
        wait_routes(peer, 1)
        config = make_config(tmp_path, overlay="external", overlay_daemon=daemon.api)
        config.data_dir.mkdir(parents=True)
        erin = add_user(config.data_dir, "erin")["agent_id"]
        (config.data_dir / "overlay-allow.json").write_text(json.dumps({erin: [peer.public]}))
        async with serving(replace(config), agent_factory=Courier) as parts, \
                httpx.AsyncClient(timeout=30) as client:
            assert parts.overlay is not None and parts.overlay.public_key == daemon.public
            # a Mycelium peer reaches erin's agent: the daemon's key, erin's topic; the answer is its reply
            r = await client.post(peer.api + "/api/v1/messages", params={"reply_timeout": 10}, json={
                "dst": {"pk": daemon.public}, "topic": b64(agent_topic(erin)), "payload": b64(b"hi erin")})
            assert r.status_code == 200, r.text
            assert base64.b64decode(r.json()["payload"]).decode() == f"{erin[:8]} got 'hi erin' from a node"
            assert r.json()["srcPk"] == daemon.public

            # erin's agent sends to the peer through the daemon and waits; the peer's client answers it
            asking = asyncio.ensure_future(ask(parts.node, erin, peer.address, "ping"))
            got = await client.get(peer.api + "/api/v1/messages", params={"timeout": 10})
            assert got.status_code == 200 and base64.b64decode(got.json()["payload"]) == b"ping"
            assert got.json()["srcPk"] == daemon.public
            reply_path = f"{peer.api}/api/v1/messages/reply/{got.json()['id']}"
            r = await client.post(reply_path, json={"payload": b64(b"pong")})
            assert r.status_code == 204
            assert await asyncio.wait_for(asking, 15) == "pong"

            # to a node nobody has a route to: the daemon's 404 comes back as the agent's error
            assert (await ask(parts.node, erin, "5ff::1", "anyone?")).startswith("error: the Mycelium daemon says")
            # the operator sees the daemon's view
            op = {"Authorization": f"Bearer {operator_token(config.data_dir)}"}
            net = (await client.get(f"http://127.0.0.1:{config.port}/api/node/net", headers=op)).json()
            assert net["mode"] == "external" and net["nodePubkey"] == daemon.public and net["peers"]
            assert net["connected"] and net["received"] >= 1 and net["sent"] >= 1
    finally:
        peer.stop()
        daemon.stop()


async def test_an_unreachable_daemon_costs_only_the_overlay(tmp_path: Path) -> None:
    config = make_config(tmp_path, overlay="external", overlay_daemon="http://127.0.0.1:9")
    async with serving(config, agent_factory=Courier) as parts:
        assert parts.overlay is None  # logged; the node serves without it
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"http://127.0.0.1:{config.port}/healthz")).status_code == 200
