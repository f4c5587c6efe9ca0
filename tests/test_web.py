"""The HTTP edge on a real server: the official openai client, auth, isolation, bad input."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from hero.chat.agent import ChatAgent
from hero.runtime.events import ChatMessage, Event, Reply
from tests.conftest import add_user, auth, make_config, operator_token, serving


def client(parts, token: str) -> openai.AsyncOpenAI:
    ai = openai.AsyncOpenAI(base_url=f"{parts.base_url}/v1", api_key=token, max_retries=0)
    parts.clients.append(ai)
    return ai


async def test_openai_client_stream_and_non_stream(node):
    ai = client(node, node.alice["token"])
    result = await ai.chat.completions.create(model="hero", messages=[{"role": "user", "content": "Say hi"}])
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content.strip()
    assert result.choices[0].finish_reason in ("stop", "length")
    stream = await ai.chat.completions.create(
        model="hero",
        messages=[{"role": "user", "content": "Name a color"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, usage, finish, ids = [], None, None, set()
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(deltas).strip()
    assert finish in ("stop", "length") and len(ids) == 1
    assert usage is not None and usage.completion_tokens > 0
    models = await ai.models.list()
    assert "hero" in [m.id for m in models.data]


async def test_raw_sse_ends_with_done_and_history_is_kept(node):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        body = {"model": "hero", "stream": True, "messages": [{"role": "user", "content": "remember that I am Alice"}]}
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=auth(node.alice["token"])) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        assert "I will remember that I am Alice." in "".join(
            json.loads(line[5:])["choices"][0]["delta"].get("content", "") for line in lines[:-1]
        )
        page = (await http.get("/api/me/messages", headers=auth(node.alice["token"]))).json()
        assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
        assert page["messages"][0]["content"] == "remember that I am Alice"


async def test_full_history_from_client_is_ignored_agent_uses_its_own(node):
    ai = client(node, node.alice["token"])
    await ai.chat.completions.create(
        model="hero",
        messages=[
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": "old question"},
            {"role": "assistant", "content": "old answer"},
            {"role": "user", "content": "remember that my cat is Tom"},
        ],
    )
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        history = (await http.get("/api/me/messages", headers=auth(node.alice["token"]))).json()["messages"]
    assert [m["content"] for m in history] == ["remember that my cat is Tom", "I will remember that my cat is Tom."]


async def test_history_pagination_newest_last(node):
    ai = client(node, node.alice["token"])
    for i in range(4):
        await ai.chat.completions.create(model="hero", messages=[{"role": "user", "content": f"remember that n={i}"}])
    async with httpx.AsyncClient(base_url=node.base_url, headers=auth(node.alice["token"])) as http:
        first = (await http.get("/api/me/messages", params={"limit": 3})).json()
        assert [m["seq"] for m in first["messages"]] == [6, 7, 8] and first["has_more"]
        second = (await http.get("/api/me/messages", params={"limit": 3, "before": first["next_before"]})).json()
        assert [m["seq"] for m in second["messages"]] == [3, 4, 5]
        assert (await http.get("/api/me/messages", params={"limit": "x"})).status_code == 400


async def test_users_are_isolated(node):
    ai_a, ai_b = client(node, node.alice["token"]), client(node, node.bob["token"])
    await ai_a.chat.completions.create(model="hero", messages=[{"role": "user", "content": "remember that secret=42"}])
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        bob_history = (await http.get("/api/me/messages", headers=auth(node.bob["token"]))).json()["messages"]
        assert bob_history == []
        # no request field can redirect a user's message to another agent
        r = await http.post(
            "/v1/chat/completions",
            headers=auth(node.bob["token"]),
            json={"model": node.alice["agent_id"], "user": node.alice["agent_id"],
                  "messages": [{"role": "user", "content": "remember that bob was here"}]},
        )
        assert r.status_code == 200
        alice_history = (await http.get("/api/me/messages", headers=auth(node.alice["token"]))).json()["messages"]
        assert all("bob" not in m["content"] for m in alice_history)
        # the operator sees both agents (who may reach which route: tests/test_web_auth.py's matrix)
        op = operator_token(node.config.data_dir)
        agents = (await http.get("/api/node/agents", headers=auth(op))).json()["agents"]
        assert {a["agent_id"] for a in agents} == {node.alice["agent_id"], node.bob["agent_id"]}
        assert {a["status"] for a in agents} == {"active"}
    assert (await ai_b.models.list()).data


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": "hi"}', 422, "messages"),
        (b'{"messages": []}', 422, "messages"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', 422, "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', 422, "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}', 422,
         "messages[1].role"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 422, "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}', 422, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 422, "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": 7}', 422, "model"),
    ],
)
async def test_bad_chat_requests_name_the_field(node, body, status, field):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        r = await http.post("/v1/chat/completions", content=body, headers=auth(node.alice["token"]))
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"]
    assert error.get("param") == field
    assert "Traceback" not in r.text


async def test_body_over_one_mib_is_413(node):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (1 << 20)}]})
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        r = await http.post("/v1/chat/completions", content=big, headers=auth(node.alice["token"]))
        assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

        async def chunks():
            for _ in range(20):
                yield b"x" * 100_000

        r = await http.post("/v1/chat/completions", content=chunks(), headers=auth(node.alice["token"]))
        assert r.status_code == 413


class Flaky(ChatAgent):
    """Raises on 'crash'; otherwise echoes. Stands for a buggy skill."""

    async def handle(self, event: Event, reply: Reply) -> None:
        assert isinstance(event, ChatMessage)
        self.history.add("user", event.text)
        await self.ctx.persist()
        reply.accept()
        if event.text == "crash":
            raise RuntimeError("skill bug with /secret/path")
        reply.write("fine")


async def test_agent_error_reaches_user_as_message_not_traceback(tmp_path, caplog):
    config = make_config(tmp_path, agent="tests.test_web:Flaky")  # the node's agent, chosen by its config
    async with serving(config) as parts:
        user = add_user(config.data_dir, "carol")
        ai = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{config.port}/v1", api_key=user["token"], max_retries=0)
        with pytest.raises(openai.APIError) as info:
            async for _ in await ai.chat.completions.create(
                model="hero", messages=[{"role": "user", "content": "crash"}], stream=True
            ):
                pass
        assert "failed to answer" in str(info.value) and "/secret/path" not in str(info.value)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
            r = await http.post("/v1/chat/completions", headers=auth(user["token"]),
                                json={"messages": [{"role": "user", "content": "crash"}]})
            assert r.status_code == 500 and "Traceback" not in r.text and "/secret" not in r.text
        again = await ai.chat.completions.create(model="hero", messages=[{"role": "user", "content": "ok?"}])
        assert again.choices[0].message.content == "fine"
        await ai.close()
        assert "skill bug" in caplog.text
        entries = await parts.chat.entries(user["agent_id"])
        assert [e.content for e in entries if e.role == "user"] == ["crash", "crash", "ok?"]


async def test_healthz_and_chat_page(node):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        health = (await http.get("/healthz")).json()
        assert health["status"] == "ok" and health["model_loaded"] is True
        page = await http.get("/")
        assert page.status_code == 200 and "/v1/chat/completions" in page.text
        assert (await http.get("/nope")).json()["error"]["type"] == "http_error"
        started = time.perf_counter()
        me = (await http.get("/api/me", headers=auth(node.alice["token"]))).json()
        assert me["agent_id"] == node.alice["agent_id"] and time.perf_counter() - started < 2


async def test_usage_and_length_finish_reason(node):
    ai = client(node, node.alice["token"])
    result = await ai.chat.completions.create(
        model="hero", max_tokens=3, messages=[{"role": "user", "content": "Write a long poem about the sea"}]
    )
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 3
    assert result.usage.prompt_tokens > 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + 3
