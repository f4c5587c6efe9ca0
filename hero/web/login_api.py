"""Sign-in with the user's own Ed25519 key: `POST /api/auth/challenge`, then `POST /api/auth/login`.

The user's secret key never leaves their device: the browser signs a
challenge with WebCrypto and the node checks the signature against the
agent id (which *is* the public key). The challenge is a blob signed by the
node carrying the agent id, a random nonce and a 2-minute expiry, so issuing
one stores nothing; the nonce of each answered challenge is kept in the user
registry until the challenge expires, so a captured answer never works twice
(not even after a restart, nor on another process of the same node).

`POST /api/auth/logout` revokes the caller's token (sign-out everywhere that
copy of the token went).

Challenge: `hero-login1.<b64url JSON {aid, n, exp}>.<b64url node signature>`;
the user signs the UTF-8 bytes of that whole string.
"""

from __future__ import annotations

import binascii
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import InvalidField, Unauthorized
from hero.identity import NodeKeys, check_agent_id, unb64u, verify_signature
from hero.web.auth import authenticate
from hero.web.bodies import read_json
from hero.web.parts import parts

CHALLENGE_PREFIX = "hero-login1"
CHALLENGE_TTL = 120.0
CHALLENGE_CLAIMS: dict[str, type] = {"aid": str, "n": str, "exp": int}
MAX_BODY = 4096


def make_challenge(keys: NodeKeys, agent_id: str, *, now: float | None = None) -> tuple[str, int]:
    """A node-signed challenge for `agent_id`, and its expiry (unix seconds)."""
    exp = int((time.time() if now is None else now) + CHALLENGE_TTL)
    claims = {"aid": agent_id, "n": secrets.token_hex(16), "exp": exp}
    return keys.seal_claims(CHALLENGE_PREFIX, claims), exp


def open_challenge(keys: NodeKeys, challenge: str, *, now: float | None = None) -> dict[str, Any]:
    """The challenge's claims if this node issued it and it has not expired; Unauthorized otherwise."""
    claims = keys.open_claims(CHALLENGE_PREFIX, challenge, what="challenge", schema=CHALLENGE_CLAIMS)
    if claims["exp"] < (time.time() if now is None else now):
        raise Unauthorized("challenge expired: ask for a new one")
    return claims


def decode_signature(raw: Any) -> bytes:
    """A 64-byte Ed25519 signature given as hex or base64url."""
    if not isinstance(raw, str) or not raw:
        raise InvalidField("signature must be a string (hex or base64url)", field="signature")
    try:
        sig = bytes.fromhex(raw) if len(raw) == 128 else unb64u(raw)
    except (ValueError, binascii.Error):
        raise InvalidField("signature is neither hex nor base64url", field="signature") from None
    if len(sig) != 64:
        raise InvalidField("signature must be 64 bytes", field="signature")
    return sig


async def challenge(request: Request) -> Response:
    body = await read_json(request, MAX_BODY)
    agent_id = body.get("agent_id")
    if not isinstance(agent_id, str):
        raise InvalidField("agent_id must be a string (your Ed25519 public key, hex)", field="agent_id")
    check_agent_id(agent_id)
    text, exp = make_challenge(parts(request).users.keys, agent_id)
    return JSONResponse({"challenge": text, "expires": exp})


async def login(request: Request) -> Response:
    body = await read_json(request, MAX_BODY)
    text = body.get("challenge")
    if not isinstance(text, str):
        raise InvalidField("challenge must be the string from /api/auth/challenge", field="challenge")
    signature = decode_signature(body.get("signature"))
    users = parts(request).users
    claims = open_challenge(users.keys, text)
    agent_id = claims["aid"]
    if not verify_signature(agent_id, text.encode(), signature):
        raise Unauthorized("signature does not match the agent's key")
    if not await users.spend_nonce(claims["n"], claims["exp"]):
        raise Unauthorized("challenge already used: ask for a new one")
    user = users.by_agent(agent_id)
    if user is None or user.revoked:
        raise Unauthorized("no active user has this key on this node")
    token, issued = users.issue(user)
    return JSONResponse({"token": token, "name": user.name, "agent_id": user.agent_id, "expires": issued.exp})


async def logout(request: Request) -> Response:
    """Sign-out revokes the token itself, so a copy left on a lost phone stops working too."""
    claims = await authenticate(request)
    users = parts(request).users
    users.revoke_token(claims.jti, claims.exp)
    await users.flush()  # in the store, so every node refuses it, before we say it is done
    return Response(status_code=204)


def routes() -> list[Route]:
    return [
        Route("/api/auth/challenge", challenge, methods=["POST"]),
        Route("/api/auth/login", login, methods=["POST"]),
        Route("/api/auth/logout", logout, methods=["POST"]),
    ]

