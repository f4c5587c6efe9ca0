"""What users and operators see of runtime faults over HTTP (issue 9: items 6, 10 and 11's repair half).

A real node on 127.0.0.1 with real QSS; where the model is not what is tested,
the agent's LLM is a small double that streams one token and then waits until
its listener stops, as a long reply does.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents import assistant
from hero.chat.entry import HistoryEntry
from hero.identity import NodeKeys
from hero.runtime.agent import Agent, AgentContext, AgentFactory
from hero.runtime.events import OverlayMessage
from hero.runtime.keys import state_key, timers_key
from hero.server import open_store
from tests.conftest import (
    add_user,
    auth,
    free_port,
    hero_cli,
    hero_json,
    history,
    make_config,
    make_node,
    new_agent,
    operator_token,
    serving,
)
from tests.doubles import ScriptedLLM
from tests.test_cli import NodeProcess
from tests.test_runtime_faults import poisoned_state, rot


def slow_assistant(first: str | None) -> AgentFactory:
    """The shipped assistant with a model that says `first` (if any), then nothing until the listener goes away."""

    def create(ctx: AgentContext) -> Agent:
        ctx.llm = ScriptedLLM([first] if first is not None else [], hold=True)
        return assistant.create(ctx)

    return create


def chat_body(text: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": "hero", "stream": stream, "messages": [{"role": "user", "content": text}]}


async def stored_history(config: Any, agent_id: str) -> list[HistoryEntry]:
    """The history as the store keeps it, read by a node that is not running."""
    store = await open_store(config, NodeKeys.load_or_create(config.data_dir))
    try:
        return await history(make_node(store, assistant.create), agent_id)
    finally:
        await store.aclose()


# item 10: no empty entries; streams end cleanly at shutdown


@pytest.mark.parametrize(("first", "expected"), [(None, []), ("Once upon", [("Once upon", "stopped")])])
async def test_a_stopped_reply_leaves_no_empty_entry_and_is_marked_stopped(tmp_path: Path, first, expected):
    config = make_config(tmp_path)
    async with serving(config, agent_factory=slow_assistant(first)) as parts:
        alice = add_user(config.data_dir, "alice")
        url = f"http://127.0.0.1:{config.port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = chat_body("tell me a long story", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(alice["token"])) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():  # the role chunk, then the first token if there is one
                    if line.startswith("data:") and (first is None or first in line):
                        break
            # the user pressed stop: the client closed the stream
            await asyncio.wait_for(parts.node.settle(), 10)
            messages = (await client.get("/api/me/messages", headers=auth(alice["token"]))).json()["messages"]
    assert all(m["content"] for m in messages), messages
    assert [(m["content"], m["kind"]) for m in messages if m["role"] == "assistant"] == expected


async def test_shutdown_ends_in_flight_streams_with_an_error_and_done(tmp_path: Path):
    config = make_config(tmp_path)
    async with serving(config, agent_factory=slow_assistant("Once upon")) as parts:
        alice = add_user(config.data_dir, "alice")
        headers = auth(alice["token"])
        url = f"http://127.0.0.1:{config.port}"
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            client.stream("GET", "/api/me/events", headers=headers) as events,
            client.stream("POST", "/v1/chat/completions", json=chat_body("a story", stream=True), headers=headers) as r,
        ):
            event_lines, chat_lines = events.aiter_lines(), r.aiter_lines()
            async for line in event_lines:
                if line == "event: ready":
                    break
            async for line in chat_lines:
                if "Once upon" in line:
                    break
            server = signal.getsignal(signal.SIGTERM).__self__  # type: ignore[union-attr]
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            chat_rest = [line async for line in chat_lines if line.startswith("data:")]
            events_rest = [line async for line in event_lines if line]
        await asyncio.wait_for(parts.node.settle(), 10)
    error = json.loads(chat_rest[-2][len("data:") :])
    assert error["error"]["type"] == "unavailable" and "shutting down" in error["error"]["message"]
    assert chat_rest[-1] == "data: [DONE]"
    assert events_rest[-4:] == [
        "event: error",
        events_rest[-3],
        "event: done",
        "data: [DONE]",
    ] and "shutting down" in events_rest[-3]
    entries = await stored_history(config, alice["agent_id"])
    assert [(e.role, e.content, e.kind) for e in entries] == [
        ("user", "a story", "chat"),
        ("assistant", "Once upon", "stopped"),
    ]


@pytest.mark.model
def test_sigterm_mid_reply_ends_both_streams_with_an_error_and_done_and_keeps_no_empty_entry(tmp_path: Path):
    data = tmp_path / "data"
    alice = hero_json("user", "add", "alice", "--data", str(data))
    headers = auth(alice["token"])
    body = {**chat_body("Write a very long story about a dragon and a lighthouse.", stream=True), "max_tokens": 1000}
    node = NodeProcess(data)  # the real `hero up`, real model
    try:
        with (
            httpx.Client(base_url=node.url, timeout=60) as client,
            client.stream("GET", "/api/me/events", headers=headers) as events,
            client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply,
        ):
            event_lines, chat_lines = events.iter_lines(), reply.iter_lines()
            next(line for line in event_lines if line == "event: ready")
            next(line for line in chat_lines if '"content":"' in line and '"content":""' not in line)
            node.proc.send_signal(signal.SIGTERM)  # mid-reply
            chat_rest = [line for line in chat_lines if line.startswith("data:")]
            events_rest = [line for line in event_lines if line]
    finally:
        output = node.stop()
    assert node.proc.returncode == 0, output
    assert chat_rest[-1] == "data: [DONE]" and "shutting down" in chat_rest[-2], chat_rest[-3:]
    assert events_rest[-4] == "event: error" and "shutting down" in events_rest[-3]
    assert events_rest[-2:] == ["event: done", "data: [DONE]"]
    node = NodeProcess(data)
    try:
        messages = httpx.get(f"{node.url}/api/me/messages", headers=headers).json()["messages"]
    finally:
        node.stop()
    assert all(m["content"] for m in messages), messages  # no blank bubble
    assert [m["kind"] for m in messages] == ["chat", "stopped"]  # the cut reply is kept, marked


# item 6: a damaged agent, as its user and the operator see it


async def test_a_damaged_agent_gets_a_clear_503_and_the_operator_sees_which_and_why(tmp_path: Path):
    config = make_config(tmp_path)
    async with serving(config):
        alice, bob = add_user(config.data_dir, "alice"), add_user(config.data_dir, "bob")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as client:
            r = await client.post(
                "/v1/chat/completions", json=chat_body("remind me in 60 minutes to stretch"),
                headers=auth(alice["token"]),
            )
            assert r.status_code == 200
    store = await open_store(config, NodeKeys.load_or_create(config.data_dir))
    await rot(store, timers_key(alice["agent_id"]), 5)
    await store.aclose()

    config = replace(config, port=free_port())
    url = f"http://127.0.0.1:{config.port}"
    async with serving(config), httpx.AsyncClient(base_url=url, timeout=60) as client:  # the node starts
        ok = await client.post("/v1/chat/completions", json=chat_body("remember that I like tea"),
                               headers=auth(bob["token"]))
        assert ok.status_code == 200
        refused = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=auth(alice["token"]))
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["type"] == "agent_damaged" and "reminders could not be read" in error["message"]
        assert alice["agent_id"][:12] not in error["message"] and "local-" not in error["message"]
        me = (await client.get("/api/me", headers=auth(alice["token"]))).json()
        assert me["agent_status"] == "damaged"

        operator = auth(operator_token(config.data_dir))
        listing = (await client.get("/api/node/agents", headers=operator)).json()
        assert listing["damaged"] == 1
        [damaged] = [a for a in listing["agents"] if a["status"] == "damaged"]
        assert damaged["agent_id"] == alice["agent_id"] and damaged["user"] == "alice"
        assert "timers unreadable" in damaged["reason"] and damaged["damaged_since"] > 0
        status = (await client.get("/api/node/status", headers=operator)).json()
        assert status["agents"]["damaged"] == 1
        cli = await asyncio.to_thread(hero_json, "agents", "--data", str(config.data_dir), "--url", url)
        [row] = [a for a in cli if a["agent_id"] == alice["agent_id"]]
        assert row["status"] == "damaged" and "timers unreadable" in row["reason"]
        text = await asyncio.to_thread(hero_cli, "agents", "--data", str(config.data_dir), "--url", url)
        [line] = [line for line in text.stdout.splitlines() if "alice" in line]
        assert "damaged" in line and "timers unreadable" in line


# item 11 (repair half): a history that already holds a lone surrogate


async def test_a_user_whose_history_holds_a_lone_surrogate_can_read_and_chat_again(tmp_path: Path):
    config = make_config(tmp_path)
    alice = add_user(config.data_dir, "alice")
    store = await open_store(config, NodeKeys.load_or_create(config.data_dir))
    await store.put(state_key(alice["agent_id"]), poisoned_state(), epoch=1)  # as an older node stored it
    await store.aclose()
    async with serving(config), httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as client:
        page = await client.get("/api/me/messages", headers=auth(alice["token"]))
        assert page.status_code == 200
        assert page.json()["messages"][0]["content"] == "hi \ufffd"
        r = await client.post("/v1/chat/completions", json=chat_body("Say hello"), headers=auth(alice["token"]))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
        again = await client.get("/api/me/messages", headers=auth(alice["token"]))
        assert again.status_code == 200 and len(again.json()["messages"]) == 4


async def test_an_overlay_reply_stopped_before_its_first_token_leaves_no_empty_entry(store):
    node = make_node(store, slow_assistant(None), idle_after_s=60)
    agent = new_agent()
    reply = await node.deliver(agent, OverlayMessage("m1", "ab" * 32, "400::1", b"t", b"hello over there"))
    await reply.wait_accepted()
    reply.cancel()  # the overlay sender went away before the first token
    await asyncio.wait_for(node.settle(), 10)
    entries = await history(node, agent)
    await node.aclose()
    assert all(e.content for e in entries), entries
    assert [e.kind for e in entries] == ["overlay"]
