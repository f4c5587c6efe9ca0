"""Bad input at the HTTP edge, on a real server: always a 4xx naming the field, never a 500.

Every case runs on one keep-alive connection (httpx with a single connection):
an error answer must leave it usable, so the client's address never changes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import auth

CHAT = "/v1/chat/completions"
CHALLENGE = "/api/auth/challenge"
LOGIN = "/api/auth/login"


def chat(*, content: Any = "hi", role: Any = "user", **extra: Any) -> bytes:
    return json.dumps({"messages": [{"role": role, "content": content}], **extra}).encode()


def raw(prefix: str, deep: str, suffix: str = "") -> bytes:
    return (prefix + deep + suffix).encode()


USER_MSG = '{"messages":[{"role":"user","content":"hi"}]'
DEEP_OPEN = "[" * 3000  # unterminated: the parser gives up on depth before it sees the missing brackets

# (path, body, status, field); the same answer whatever else the node is doing.
BAD_INPUT: list[tuple[str, bytes, int, str | None]] = [
    # 11. lone surrogates, in values, parts and member names of every body the API accepts
    (CHAT, rb'{"messages":[{"role":"user","content":"hi \ud800"}]}', 422, "messages[0].content"),
    (CHAT, rb'{"messages":[{"role":"user","content":[{"type":"text","text":"\udfff"}]}]}', 422,
     "messages[0].content[0].text"),
    (CHAT, rb'{"messages":[{"role":"system","content":"\ud83d"},{"role":"user","content":"hi"}]}', 422,
     "messages[0].content"),
    (CHAT, rb'{"messages":[{"role":"user","content":"hi"}],"model":"\udc00x"}', 422, "model"),
    (CHAT, rb'{"messages":[{"role":"user","content":"hi","\ud800":1}]}', 422, "messages[0]"),
    (CHALLENGE, rb'{"agent_id":"\ud800"}', 422, "agent_id"),
    (LOGIN, rb'{"challenge":"x.y.\ud800","signature":"00"}', 422, "challenge"),
    # 12. wrong shapes
    (CHAT, chat(role=["user"]), 422, "messages[0].role"),
    (CHAT, chat(role={"a": 1}), 422, "messages[0].role"),
    (CHAT, chat(role="x" * 100_000), 422, "messages[0].role"),
    (CHAT, raw(USER_MSG, ',"max_tokens":' + "9" * 4400, "}"), 422, "max_tokens"),
    (CHAT, raw(USER_MSG, ',"max_tokens":-' + "9" * 5000, "}"), 422, "max_tokens"),
    (CHAT, raw(USER_MSG, ',"temperature":' + "1" * 4400, "}"), 422, "temperature"),
    (CHAT, chat(max_tokens=-5, max_completion_tokens=None), 422, "max_tokens"),
    (CHAT, chat(max_tokens=5, max_completion_tokens=10**9), 422, "max_completion_tokens"),
    (CHAT, chat(max_completion_tokens="9"), 422, "max_completion_tokens"),
    (CHAT, raw(USER_MSG, ',"temperature":NaN', "}"), 422, "temperature"),
    (CHAT, raw(USER_MSG, ',"temperature":-Infinity', "}"), 422, "temperature"),
    (CHAT, chat(stream_options=[1]), 422, "stream_options"),
    # 12. JSON nested 3,000 deep, anonymous and signed in; also deep but within the parser's reach
    (CHAT, raw('{"messages":', DEEP_OPEN), 400, "messages"),
    (CHALLENGE, raw('{"agent_id":', DEEP_OPEN), 400, "agent_id"),
    (LOGIN, raw('{"signature":"00","challenge":', DEEP_OPEN), 400, "challenge"),
    (LOGIN, raw("", DEEP_OPEN), 400, None),
    (CHAT, raw(USER_MSG + ',"extra":', "[" * 900 + "]" * 900, "}"), 400, "extra"),
    (CHALLENGE, raw('{"agent_id":', "[" * 900 + "]" * 900, "}"), 400, "agent_id"),
]


def over_the_size_bound(limit: int) -> list[tuple[str, bytes, int, str | None]]:
    """13. A message over the bound (the body itself is well under 1 MiB)."""
    parts = [{"type": "text", "text": "y" * limit}, {"type": "text", "text": "y"}]
    return [
        (CHAT, chat(content="x" * (limit + 1)), 413, "messages[0].content"),
        (CHAT, chat(content=parts), 413, "messages[0].content"),
        (CHAT, json.dumps({"messages": [{"role": "user", "content": "x" * (limit + 1)},
                                        {"role": "user", "content": "hi"}]}).encode(), 413, "messages[0].content"),
    ]


def client_addr(response: httpx.Response) -> object:
    """The local address of the connection that carried `response` ("closed" if the server hung up)."""
    try:
        return response.extensions["network_stream"].get_extra_info("client_addr")
    except OSError:
        return "closed"


async def test_bad_input_is_4xx_naming_the_field_on_one_live_connection(node):
    token = node.alice["token"]
    wrong: list[str] = []
    peers = set()
    async with httpx.AsyncClient(base_url=node.base_url, limits=httpx.Limits(max_connections=1), timeout=60) as http:
        for path, body, status, field in BAD_INPUT + over_the_size_bound(node.config.max_message_chars):
            r = await http.post(path, content=body, headers=auth(token))
            peers.add(client_addr(r))
            case = f"{path} {body[:60]!r}"
            if r.status_code != status:
                wrong.append(f"{case}: status {r.status_code} (want {status}): {r.text[:200]}")
                continue
            error = r.json()["error"]
            if error.get("param") != field or not error["message"] or len(r.content) > 1000:
                wrong.append(f"{case}: {r.text[:300]} (want param {field!r}, a short message)")
        # the connection survived every error and the node still answers this user
        page = await http.get("/api/me/messages", headers=auth(token))
        peers.add(client_addr(page))
    assert wrong == [], "\n".join(wrong)
    assert page.status_code == 200 and page.json()["messages"] == []  # nothing rejected was stored
    assert len(peers) == 1


async def test_message_at_the_size_bound_is_accepted(node):
    """The bound is on each message; a client's full history of big messages is fine up to it."""
    limit = node.config.max_message_chars
    earlier = {"role": "assistant", "content": "z" * limit}
    body = {"messages": [earlier, {"role": "user", "content": "remember that big is fine"}]}
    async with httpx.AsyncClient(base_url=node.base_url, timeout=60) as http:
        r = await http.post(CHAT, json=body, headers=auth(node.alice["token"]))
        assert r.status_code == 200, r.text
        text = "remember that " + "w" * (limit - len("remember that "))
        r = await http.post(CHAT, json={"messages": [{"role": "user", "content": text}]},
                            headers=auth(node.alice["token"]))
        assert r.status_code == 200, r.text[:300]


async def test_valid_unicode_including_astral_characters_is_kept(node):
    """Surrogate *pairs* are how JSON spells astral characters: they are fine and kept as sent."""
    async with httpx.AsyncClient(base_url=node.base_url, timeout=60) as http:
        body = rb'{"messages":[{"role":"user","content":"remember that I like \ud83c\udf75 and th\u00e9"}]}'
        r = await http.post(CHAT, content=body, headers=auth(node.alice["token"]))
        assert r.status_code == 200, r.text
        history = (await http.get("/api/me/messages", headers=auth(node.alice["token"]))).json()["messages"]
    assert history[0]["content"] == "remember that I like \U0001f375 and thé"


async def test_an_unexpected_error_is_a_500_json_and_the_connection_stays_usable(node, caplog):
    """A bug in a handler costs that one request: one logged traceback, a JSON 500, the same connection."""

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug with /secret/path")

    node.app.router.routes.append(Route("/test-broken", broken, methods=["GET"]))
    async with httpx.AsyncClient(base_url=node.base_url, limits=httpx.Limits(max_connections=1)) as http:
        r = await http.get("/test-broken")
        first = client_addr(r)
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        assert "/secret" not in r.text and "Traceback" not in r.text
        again = await http.get("/healthz")
        assert again.status_code == 200 and client_addr(again) == first
    logged = [r for r in caplog.records if r.exc_info and "a bug with /secret/path" in str(r.exc_info[1])]
    assert len(logged) == 1  # once, by the app (not again by the server)
