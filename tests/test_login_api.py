"""Sign-in with the user's Ed25519 key (challenge, signature, token) and sign-out, on a real server."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import httpx
import pytest

from hero.identity import NodeKeys, UserKey, b64u, unb64u
from hero.users import Users
from hero.web.login_api import CHALLENGE_PREFIX, make_challenge
from tests.conftest import free_port, make_config, serving
from tests.test_web_auth import same_bytes_other_text


@pytest.fixture
async def node(tmp_path):
    config = make_config(tmp_path)
    async with serving(config) as parts:
        parts.base_url = f"http://127.0.0.1:{config.port}"
        parts.key = UserKey.generate()
        await parts.users.add_user("alice", parts.key.agent_id)  # in the store before the tests look
        yield parts


async def challenge(http: httpx.AsyncClient, agent_id: str) -> str:
    r = await http.post("/api/auth/challenge", json={"agent_id": agent_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 100 <= body["expires"] - time.time() <= 121
    return body["challenge"]


def sign(key: UserKey, text: str) -> str:
    return key.signing.sign(text.encode()).signature.hex()


async def test_key_login_issues_a_working_token(node):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        text = await challenge(http, node.key.agent_id)
        r = await http.post("/api/auth/login", json={"challenge": text, "signature": sign(node.key, text)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "alice" and body["agent_id"] == node.key.agent_id
        me = await http.get("/api/me", headers={"Authorization": f"Bearer {body['token']}"})
        assert me.status_code == 200 and me.json()["agent_id"] == node.key.agent_id
        # base64url signatures are accepted as well as hex
        text = await challenge(http, node.key.agent_id)
        sig = b64u(node.key.signing.sign(text.encode()).signature)
        assert (await http.post("/api/auth/login", json={"challenge": text, "signature": sig})).status_code == 200


async def test_wrong_key_unknown_or_revoked_user_and_replay_are_401(node):
    stranger = UserKey.generate()
    async with httpx.AsyncClient(base_url=node.base_url) as http:

        async def login(text: str, signature: str) -> httpx.Response:
            return await http.post("/api/auth/login", json={"challenge": text, "signature": signature})

        text = await challenge(http, node.key.agent_id)
        r = await login(text, sign(stranger, text))  # someone else's key cannot answer alice's challenge
        assert r.status_code == 401 and "signature" in r.json()["error"]["message"]
        # a valid key that is no user of this node
        text = await challenge(http, stranger.agent_id)
        r = await login(text, sign(stranger, text))
        assert r.status_code == 401 and "no active user" in r.json()["error"]["message"]
        # an answered challenge works once
        text = await challenge(http, node.key.agent_id)
        assert (await login(text, sign(node.key, text))).status_code == 200
        r = await login(text, sign(node.key, text))
        assert r.status_code == 401 and "already used" in r.json()["error"]["message"]
        # the challenge is signed by the node: its agent id cannot be swapped
        head, payload, sig = (await challenge(http, stranger.agent_id)).split(".")
        claims = json.loads(unb64u(payload)) | {"aid": node.key.agent_id}
        forged = f"{head}.{b64u(json.dumps(claims).encode())}.{sig}"
        r = await login(forged, sign(node.key, forged))
        assert r.status_code == 401 and "not issued by this node" in r.json()["error"]["message"]
        # expired challenges are refused
        keys = NodeKeys.load_or_create(node.config.data_dir)
        old, _ = make_challenge(keys, node.key.agent_id, now=time.time() - 300)
        r = await login(old, sign(node.key, old))
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
        # revoked users cannot sign in, even with a correct signature
        node.users.revoke("alice")
        text = await challenge(http, node.key.agent_id)
        assert (await login(text, sign(node.key, text))).status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/api/auth/challenge", {"agent_id": "zz"}, 400, "agent_id"),
        ("/api/auth/challenge", {"agent_id": 5}, 422, "agent_id"),
        ("/api/auth/challenge", {}, 422, "agent_id"),
        ("/api/auth/login", {"challenge": 1, "signature": "00"}, 422, "challenge"),
        ("/api/auth/login", {"challenge": "x.y.z", "signature": "00" * 10}, 422, "signature"),
        ("/api/auth/login", {"challenge": "x.y.z", "signature": "!!"}, 422, "signature"),
        ("/api/auth/login", {"challenge": "x.y.z", "signature": "00" * 64}, 401, None),
    ],
)
async def test_bad_login_requests_name_the_field(node, path, body, status, field):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        r = await http.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"].get("param") == field


async def test_logout_revokes_only_that_token(node):
    users = Users(node.config.data_dir, NodeKeys.load_or_create(node.config.data_dir))
    try:
        first, _ = users.issue(users.get("alice"))
        second, _ = users.issue(users.get("alice"))
    finally:
        users.close()
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        r = await http.post("/api/auth/logout", headers={"Authorization": f"Bearer {first}"})
        assert r.status_code == 204
        r = await http.get("/api/me", headers={"Authorization": f"Bearer {first}"})
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        assert (await http.get("/api/me", headers={"Authorization": f"Bearer {second}"})).status_code == 200


async def test_a_captured_login_does_not_replay_after_a_restart(tmp_path):
    config = make_config(tmp_path)
    key = UserKey.generate()
    async with serving(config) as parts, httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
        parts.users.add("alice", key.agent_id)
        text = await challenge(http, key.agent_id)
        captured = {"challenge": text, "signature": sign(key, text)}
        assert (await http.post("/api/auth/login", json=captured)).status_code == 200
    restarted = replace(config, port=free_port())  # the same data dir, a new process's worth of memory
    async with serving(restarted), httpx.AsyncClient(base_url=f"http://127.0.0.1:{restarted.port}") as http:
        r = await http.post("/api/auth/login", json=captured)
        assert r.status_code == 401 and "already used" in r.json()["error"]["message"]
        text = await challenge(http, key.agent_id)  # signing in afresh still works
        assert (await http.post("/api/auth/login", json={"challenge": text, "signature": sign(key, text)})).is_success


async def test_only_canonical_base64url_signatures_are_accepted(node):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        text = await challenge(http, node.key.agent_id)
        sig = b64u(node.key.signing.sign(text.encode()).signature)
        for variant in (same_bytes_other_text(sig), sig + "==", sig.replace("-", "+").replace("_", "/") + "/"):
            r = await http.post("/api/auth/login", json={"challenge": text, "signature": variant})
            assert r.status_code == 422 and r.json()["error"]["param"] == "signature", (variant, r.text)
        assert (await http.post("/api/auth/login", json={"challenge": text, "signature": sig})).status_code == 200


async def test_challenges_whose_claims_have_the_wrong_types_are_401_naming_the_claim(node):
    cases = [({"exp": "soon"}, "exp"), ({"exp": None}, "exp"), ({"n": ["x"]}, "n"), ({"n": {"a": 1}}, "n"),
             ({"aid": 5}, "aid"), ({"aid": ["a"]}, "aid"), ({"more": 1}, "more")]
    wrong = []
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        for changes, claim in cases:
            claims = {"aid": node.key.agent_id, "n": "00" * 16, "exp": int(time.time()) + 60} | changes
            text = node.keys.seal_claims(CHALLENGE_PREFIX, claims)
            r = await http.post("/api/auth/login", json={"challenge": text, "signature": sign(node.key, text)})
            if r.status_code != 401 or f"'{claim}'" not in r.json()["error"]["message"]:
                wrong.append(f"{changes}: {r.status_code} {r.text[:150]}")
    assert wrong == [], "\n".join(wrong)
