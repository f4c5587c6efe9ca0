"""Auth on a real server: only the node's canonical token encoding verifies, no claim can cause a 500,
and every route × every kind of caller gets what the route's documented auth says."""

from __future__ import annotations

import json
from typing import Any

import httpx

from hero.identity import TOKEN_PREFIX, NodeKeys, UserKey
from hero.web.openapi import routed
from hero.web.operations import operations
from tests.conftest import auth

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def same_bytes_other_text(signature: str) -> str:
    """The signature with the unused low bits of its last base64 character set: decodes to the same 64 bytes."""
    last = B64URL.index(signature[-1])
    return signature[:-1] + B64URL[last ^ 0b0001]


async def test_only_the_canonical_token_encoding_verifies(node):
    head, payload, signature = node.alice["token"].split(".")
    assert len(signature) == 86  # 64 bytes: the last character carries 2 bits, 4 are unused
    variants = {
        "low bits": f"{head}.{payload}.{same_bytes_other_text(signature)}",
        "padding": f"{head}.{payload}.{signature}==",
        "one pad": f"{head}.{payload}.{signature}=",
        "standard alphabet": f"{head}.{payload}.{signature.replace('-', '+').replace('_', '/')}",
        "whitespace": f"{head}.{payload}.{signature[:40]}\t{signature[40:]}",
        "padded payload": f"{head}.{payload}{'=' * (-len(payload) % 4) or '===='}.{signature}",
    }
    if "-" not in signature and "_" not in signature:
        del variants["standard alphabet"]
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        assert (await http.get("/api/me", headers=auth(node.alice["token"]))).status_code == 200
        statuses = {name: (await http.get("/api/me", headers=auth(token))).status_code
                    for name, token in variants.items()}
    assert statuses == dict.fromkeys(variants, 401)


def sealed(keys: NodeKeys, **changes: Any) -> str:
    claims = {"sub": "a" * 64, "name": "alice", "role": "user", "exp": 4_000_000_000, "jti": "0123456789abcdef"}
    claims.update(changes)
    return keys.seal_claims(TOKEN_PREFIX, {k: v for k, v in claims.items() if v is not ...})


BAD_CLAIMS: list[tuple[dict[str, Any], str]] = [
    ({"exp": "never"}, "exp"),
    ({"exp": True}, "exp"),
    ({"exp": 1e300}, "exp"),
    ({"exp": None}, "exp"),
    ({"sub": ["a"]}, "sub"),
    ({"sub": {"a": 1}}, "sub"),
    ({"role": ["user"]}, "role"),
    ({"role": "root"}, "role"),
    ({"jti": 5}, "jti"),
    ({"jti": ["x"]}, "jti"),
    ({"name": 7}, "name"),
    ({"name": "\ud800"}, "name"),
    ({"jti": ...}, "jti"),
    ({"extra": 1}, "extra"),
]


async def test_tokens_whose_claims_have_the_wrong_types_are_401_naming_the_claim(node):
    """Only the node can seal a token, but a bad one (a bug, an old version) must still be a clean 401."""
    wrong = []
    async with httpx.AsyncClient(base_url=node.base_url, limits=httpx.Limits(max_connections=1)) as http:
        for changes, claim in BAD_CLAIMS:
            token = sealed(node.keys, **({"sub": node.alice["agent_id"]} | changes))
            for method, path in (("GET", "/api/me"), ("POST", "/v1/chat/completions"), ("GET", "/api/me/events"),
                                 ("GET", "/api/node/status"), ("POST", "/api/auth/logout"), ("GET", "/v1/models")):
                r = await http.request(method, path, headers=auth(token), json={})
                error = r.json()["error"] if r.status_code < 500 else {}
                if r.status_code != 401 or error["type"] != "unauthorized" or f"'{claim}'" not in error["message"]:
                    wrong.append(f"{changes} {method} {path}: {r.status_code} {r.text[:150]}")
        assert (await http.get("/api/me", headers=auth(node.alice["token"]))).status_code == 200
    assert wrong == [], "\n".join(wrong)


# The routes anyone may call; every other route must refuse a caller without a valid token.
PUBLIC = {
    ("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/"), ("GET", "/dashboard"),
    ("GET", "/manifest.webmanifest"), ("GET", "/sw.js"), ("GET", "/static/{path}"),
    ("POST", "/api/auth/challenge"), ("POST", "/api/auth/login"),
}
BAD_CALLERS = {  # caller -> what the 401 must say
    "anonymous": "missing bearer token",
    "wrong scheme": "missing bearer token",
    "malformed": "malformed token",
    "foreign": "not issued by this node",
    "expired": "expired",
    "revoked token": "revoked",
    "revoked user": "revoked",
}
GOOD_CALLERS = {"user": "user", "other user": "user", "operator": "operator"}
# Routes of optional parts this test node does not run: the right answer to a good caller is 404 naming the part.
ABSENT_PARTS = {("GET", "/api/node/net"): "runs no overlay", ("GET", "/api/node/cluster"): "no cluster's member"}
# Routes that destroy a user's data need a confirmation the matrix never gives: a good caller gets 400 naming it.
UNCONFIRMED = {("DELETE", "/api/me"): "confirm"}


def request_for(method: str, path: str) -> dict[str, Any]:
    """What the matrix sends to each route: a body where one is needed, a real file for the static mount."""
    if path == "/v1/chat/completions":
        return {"json": {"messages": [{"role": "user", "content": "remember that the matrix ran"}]}}
    if path == "/mcp":
        return {"json": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}
    if method == "POST":
        return {"json": {}}
    if path == "/api/node/power/stream":
        return {"params": {"count": 1}}
    return {}


async def test_route_role_matrix_every_route_checks_its_auth(node):
    """Built from app.routes: a new route must be documented, and then it must enforce what its entry says."""
    data_dir = node.config.data_dir
    users = node.users
    ops = operations(node.config)
    assert set(ops) == routed(node.app.routes), "every route needs an entry in hero/web/operations.py"
    assert {key for key, op in ops.items() if op.auth == "public"} == PUBLIC

    carol = users.add("carol", UserKey.generate().agent_id)
    carol_token, _ = users.issue(carol)
    users.revoke("carol")
    revoked, revoked_claims = users.issue(users.get("alice"))
    users.revoke_token(revoked_claims.jti)
    foreign, _ = NodeKeys.load_or_create(data_dir / "elsewhere").issue_token(
        sub=node.alice["agent_id"], name="alice", role="user", ttl=60
    )
    expired, _ = node.keys.issue_token(sub=node.alice["agent_id"], name="alice", role="user", ttl=-1)
    fixed = {
        "anonymous": {}, "wrong scheme": {"Authorization": "Basic YWxpY2U6eA=="},
        "malformed": auth("nonsense"), "foreign": auth(foreign), "expired": auth(expired),
        "revoked token": auth(revoked), "revoked user": auth(carol_token),
    }

    def headers(caller: str) -> dict[str, str]:
        """A fresh token for each good call (one of the routes signs out)."""
        if caller in fixed:
            return fixed[caller]
        if caller == "operator":
            return auth(users.issue_operator()[0])
        return auth(users.issue(users.get("alice" if caller == "user" else "bob"))[0])

    secret = "remember that the matrix secret is 7e1f"
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        r = await http.post("/v1/chat/completions", headers=headers("user"),
                            json={"messages": [{"role": "user", "content": secret}]})
        assert r.status_code == 200
        for (method, path), op in sorted(ops.items()):
            url = path.replace("{path}", "app.css")
            for caller in [*BAD_CALLERS, *GOOD_CALLERS]:
                async with http.stream(method, url, headers=headers(caller), **request_for(method, path)) as r:
                    streaming = r.headers.get("content-type", "").startswith("text/event-stream")
                    body = b"" if streaming and r.status_code == 200 else await r.aread()
                status, cell = r.status_code, f"{method} {path} as {caller}: {r.status_code}"
                if op.auth == "public":
                    if status in (401, 403) or status >= 500:
                        wrong.append(f"{cell} (public)")
                elif caller in BAD_CALLERS:
                    error = json.loads(body)["error"] if status == 401 else {}
                    if status != 401 or error["type"] != "unauthorized" or BAD_CALLERS[caller] not in error["message"]:
                        wrong.append(f"{cell} {body[:120]!r} (want 401 saying {BAD_CALLERS[caller]!r})")
                elif op.auth != "token" and GOOD_CALLERS[caller] != op.auth:
                    if status != 403 or json.loads(body)["error"]["type"] != "forbidden":
                        wrong.append(f"{cell} (want 403)")
                elif (method, path) in ABSENT_PARTS:
                    if status != 404 or ABSENT_PARTS[method, path] not in json.loads(body)["error"]["message"]:
                        wrong.append(f"{cell} {body[:120]!r} (want 404: the node has no such part)")
                elif (method, path) in UNCONFIRMED:
                    if status != 400 or json.loads(body)["error"].get("param") != UNCONFIRMED[method, path]:
                        wrong.append(f"{cell} {body[:120]!r} (want 400 naming {UNCONFIRMED[method, path]!r})")
                elif not 200 <= status < 300:
                    wrong.append(f"{cell} {body[:120]!r} (want 2xx)")
                elif caller == "other user" and (b"7e1f" in body or node.alice["agent_id"].encode() in body):
                    wrong.append(f"{cell}: bob sees alice's data")
                elif (method, path, caller) == ("GET", "/api/me/messages", "user") and b"7e1f" not in body:
                    wrong.append(f"{cell}: alice does not see her own message")
    assert wrong == [], "\n".join(wrong)
