"""Tokens on a real server: only the node's canonical encoding verifies, and no claim can cause a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hero.identity import TOKEN_PREFIX, NodeKeys
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


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
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
    ],
)
async def test_tokens_whose_claims_have_the_wrong_types_are_401(node, changes, claim):
    """Only the node can seal a token, but a bad one (a bug, an old version) must still be a clean 401."""
    token = sealed(node.keys, **({"sub": node.alice["agent_id"]} | changes))
    async with httpx.AsyncClient(base_url=node.base_url, limits=httpx.Limits(max_connections=1)) as http:
        for method, path in (("GET", "/api/me"), ("POST", "/v1/chat/completions"), ("GET", "/api/me/events"),
                             ("GET", "/api/node/status"), ("POST", "/api/auth/logout"), ("GET", "/v1/models")):
            r = await http.request(method, path, headers=auth(token), json={})
            assert r.status_code == 401, (path, r.text)
            error = r.json()["error"]
            assert error["type"] == "unauthorized" and f"'{claim}'" in error["message"], (path, error)
        assert (await http.get("/api/me", headers=auth(node.alice["token"]))).status_code == 200
