"""`GET /api/me/events` on a real server: live messages, reminders, resume with Last-Event-ID, auth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx

from hero.identity import NodeKeys
from hero.runtime.events import ChatMessage
from hero.users import Users
from hero.web import events_api
from tests.conftest import auth


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE body into {event, id, data} dicts (comments and pings skipped)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            event["data"] = event.get("data", "") + value
        elif field in ("event", "id"):
            event[field] = value


class Events:
    """One SSE response read in steps: `await events.next(n)` returns the next events up to n messages."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        self._events = sse(response)

    async def next(self, count: int, wait: float = 20.0) -> list[dict[str, Any]]:
        """Events until `count` messages (or an auth event) arrived; count=0 returns the first event."""
        out: list[dict[str, Any]] = []

        async def read() -> None:
            async for event in self._events:
                out.append(event)
                if sum(e.get("event") == "message" for e in out) >= count or event.get("event") == "auth":
                    return

        await asyncio.wait_for(read(), wait)
        return out


def messages(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(e["data"]) | {"_id": e["id"]} for e in events if e.get("event") == "message"]


async def chat(http: httpx.AsyncClient, token: str, text: str) -> str:
    r = await http.post(
        "/v1/chat/completions", headers=auth(token), json={"messages": [{"role": "user", "content": text}]}
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


async def test_live_messages_carry_their_seq_as_event_id(node):
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        async with http.stream("GET", "/api/me/events", headers=auth(node.alice["token"])) as response:
            stream = Events(response)
            ready = await stream.next(0)
            assert ready[0]["event"] == "ready"
            await chat(http, node.alice["token"], "remember that I like tea")
            got = messages(await stream.next(2))
    assert [(m["seq"], m["role"]) for m in got] == [(1, "user"), (2, "assistant")]
    assert [m["_id"] for m in got] == ["1", "2"]
    assert got[0]["content"] == "remember that I like tea"
    assert got[1]["content"] == "I will remember that I like tea."


async def test_reminder_arrives_live_and_other_users_see_nothing(node):
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        async with (
            http.stream("GET", "/api/me/events", headers=auth(node.alice["token"])) as alice_response,
            http.stream("GET", "/api/me/events", headers=auth(node.bob["token"])) as bob_response,
        ):
            alice, bob = Events(alice_response), Events(bob_response)
            await alice.next(0)
            await bob.next(0)
            await chat(http, node.alice["token"], "remind me in 1 second to stretch")
            got = messages(await alice.next(3))
            assert got[2]["kind"] == "reminder" and got[2]["content"] == "⏰ Reminder: stretch"
            # bob's stream stays silent: a message for bob proves it was open all along
            await chat(http, node.bob["token"], "remember that I am Bob")
            bob_got = messages(await bob.next(2))
    assert [m["content"] for m in bob_got] == ["remember that I am Bob", "I will remember that I am Bob."]


async def test_resume_with_last_event_id_replays_what_was_missed(node):
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        for i in range(3):
            await chat(http, node.alice["token"], f"remember that n={i}")  # seqs 1..6
        await node.node.hibernate_idle(0)  # the replay must also work from the store, agent asleep
        assert not node.node.is_active(node.alice["agent_id"])
        headers = auth(node.alice["token"], **{"Last-Event-ID": "2"})
        async with http.stream("GET", "/api/me/events", headers=headers) as response:
            stream = Events(response)
            replayed = messages(await stream.next(4))
            assert [m["seq"] for m in replayed] == [3, 4, 5, 6]
            await chat(http, node.alice["token"], "remember that n=3")
            live = messages(await stream.next(2))
            assert [m["seq"] for m in live] == [7, 8]
        # the query parameter works too (for clients that cannot set the header)
        async with http.stream(
            "GET", "/api/me/events", params={"last_event_id": "6"}, headers=auth(node.alice["token"])
        ) as response:
            assert [m["seq"] for m in messages(await Events(response).next(2))] == [7, 8]


async def test_no_message_lost_or_doubled_while_history_and_live_overlap(node):
    """Messages added while the stream is connecting arrive exactly once, in order."""
    agent = node.alice["agent_id"]
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        await chat(http, node.alice["token"], "remember that first=1")  # seqs 1, 2

        async def burst() -> None:
            for i in range(8):
                reply = await node.node.deliver(agent, ChatMessage(f"remember that k={i}"))
                await reply.text()

        writer = asyncio.create_task(burst())
        headers = auth(node.alice["token"], **{"Last-Event-ID": "1"})
        async with http.stream("GET", "/api/me/events", headers=headers) as response:
            got = messages(await Events(response).next(17))
        await writer
    assert [m["seq"] for m in got] == list(range(2, 19))


async def test_last_event_id_must_be_a_seq(node):
    """(Which tokens may open a stream: tests/test_web_auth.py's route × role matrix.)"""
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        r = await http.get("/api/me/events", headers=auth(node.alice["token"], **{"Last-Event-ID": "abc"}))
        assert r.status_code == 400 and r.json()["error"]["param"] == "last_event_id"


async def test_stream_ends_with_an_auth_event_when_the_token_expires_or_is_revoked(node, monkeypatch):
    monkeypatch.setattr(events_api, "RECHECK_S", 0.3)  # how often a quiet stream re-checks its token
    users = Users(node.config.data_dir, NodeKeys.load_or_create(node.config.data_dir))
    try:
        short, _ = users.issue(users.get("alice"), ttl=1.5)
        revoked, claims = users.issue(users.get("alice"))
        async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
            async with http.stream("GET", "/api/me/events", headers=auth(short)) as response:
                events = await Events(response).next(1, wait=10)
            assert events[-1]["event"] == "auth"
            assert "expired" in json.loads(events[-1]["data"])["error"]["message"]
            # reconnecting with the expired token is refused, so the client asks the user to sign in
            assert (await http.get("/api/me/events", headers=auth(short))).status_code == 401
            async with http.stream("GET", "/api/me/events", headers=auth(revoked)) as response:
                stream = Events(response)
                assert (await stream.next(0))[0]["event"] == "ready"
                users.revoke_token(claims.jti)
                events = await stream.next(1, wait=10)
            assert events[-1]["event"] == "auth"
            assert "revoked" in json.loads(events[-1]["data"])["error"]["message"]
    finally:
        users.close()


async def test_open_streams_per_user_are_capped_with_a_clear_429(node):
    cap = events_api.MAX_STREAMS_PER_USER
    limits = httpx.Limits(max_connections=cap + 8)
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30, limits=limits) as http, AsyncExitStack() as stack:
        open_streams = []
        for _ in range(cap):
            response = await stack.enter_async_context(
                http.stream("GET", "/api/me/events", headers=auth(node.alice["token"]))
            )
            events = Events(response)  # kept: a dropped reader would close its connection
            assert (await events.next(0))[0]["event"] == "ready"
            open_streams.append((response, events))
        async with http.stream("GET", "/api/me/events", headers=auth(node.alice["token"])) as r:
            assert r.status_code == 429 and r.headers["retry-after"]
            error = json.loads(await r.aread())["error"]
        assert error["type"] == "too_many_streams" and str(cap) in error["message"]
        # other users are not affected, and a closed stream frees its place at once
        async with http.stream("GET", "/api/me/events", headers=auth(node.bob["token"])) as bob:
            assert bob.status_code == 200
        await open_streams.pop()[0].aclose()
        for _ in range(50):  # the node learns of the disconnect within moments
            async with http.stream("GET", "/api/me/events", headers=auth(node.alice["token"])) as again:
                if again.status_code == 200:
                    assert (await Events(again).next(0))[0]["event"] == "ready"
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a closed stream did not give its place back")
