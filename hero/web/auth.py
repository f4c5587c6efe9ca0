"""Bearer-token authentication for every API request; roles decide what a caller may reach.

A user token reaches only its own agent (the agent id is the token's subject);
an operator token reaches the node's admin endpoints and no user's agent.
"""

from __future__ import annotations

from starlette.requests import Request

from hero.errors import Forbidden, Unauthorized
from hero.identity import TokenClaims
from hero.web.parts import parts


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    return token.strip()


async def authenticate(request: Request) -> TokenClaims:
    return await parts(request).users.authenticate(bearer(request))


async def require_user(request: Request) -> TokenClaims:
    claims = await authenticate(request)
    if claims.role != "user":
        raise Forbidden("this endpoint needs a user token")
    return claims


async def require_operator(request: Request) -> TokenClaims:
    claims = await authenticate(request)
    if claims.role != "operator":
        raise Forbidden("this endpoint needs the operator token")
    return claims
