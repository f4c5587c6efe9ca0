"""`GET /openapi.json`: every endpoint with its auth, parameters, responses and error shapes (OpenAPI 3.1).

Rendered from the hand-kept table in `operations.py`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from hero.config import NodeConfig
from hero.web.operations import INTEGER, JSON, STRING, Operation, Param, fields, operations
from hero.web.parts import parts

AUTH_TEXT = {
    "public": "No token needed.",
    "token": "Any valid token (user or operator).",
    "user": "A user token; it selects the caller's own agent (never another's).",
    "operator": "The operator token.",
}
ERROR_TEXT = {
    400: "Bad request (malformed JSON, nesting too deep, a bad query parameter); `param` names the field.",
    401: "Missing, invalid, expired or revoked token.",
    403: "The token's role may not use this endpoint.",
    413: "Request body over the node's byte limit, or a message over its character limit (`param` names it).",
    422: "A field has the wrong type or value; `param` names it.",
    429: "Over the power budget or a per-user limit; retry after `Retry-After` seconds.",
    500: "The agent's turn failed; the user is told, never with a traceback.",
    503: "A part of the node (model, storage, power metering) is unavailable.",
}



def routed(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(method, path) of every route (HEAD, which Starlette adds to each GET, is left implied)."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
        elif isinstance(route, Mount):
            found.add(("GET", f"{route.path}/{{path}}"))
    return found


def document(config: NodeConfig) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in sorted(operations(config).items(), key=lambda item: (item[0][1], item[0][0])):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Hero",
            "version": "1",
            "description": "A node hosting personal AI agents. Every error is JSON "
                           '`{"error": {"message", "type", "param"?}}`; `param` names the field at fault.',
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "hero1 token"}},
            "schemas": {
                "Error": fields(
                    ("error",),
                    error=fields(("message", "type"), message=STRING, type=STRING, param=STRING),
                )
            },
        },
    }


def _operation(method: str, path: str, op: Operation) -> dict[str, Any]:
    status_codes = set(op.errors)
    if op.auth != "public":
        status_codes.add(401)
    if op.auth in ("user", "operator"):
        status_codes.add(403)
    if op.body is not None:
        status_codes |= {400, 413, 422}
    success: dict[str, Any] = {"description": op.summary}
    if op.ok:
        success["content"] = {kind: {"schema": schema} for kind, schema in op.ok.items()}
    responses: dict[str, Any] = {str(op.ok_status): success}
    if op.accepted is not None:
        responses["202"] = {"description": op.accepted, **({"content": success["content"]} if op.accepted_body else {})}
    for code in sorted(status_codes):
        responses[str(code)] = _error(code)
    out: dict[str, Any] = {
        "operationId": f"{method.lower()} {path}",
        "summary": op.summary,
        "description": AUTH_TEXT[op.auth],
        "x-hero-auth": op.auth,
        "security": [] if op.auth == "public" else [{"bearer": []}],
        "responses": responses,
    }
    if op.params:
        out["parameters"] = [_parameter(p) for p in op.params]
    if op.body is not None:
        body: dict[str, Any] = {"schema": op.body}
        if op.example is not None:
            body["example"] = op.example
        out["requestBody"] = {"required": True, "content": {JSON: body}}
    return out


def _parameter(p: Param) -> dict[str, Any]:
    out = {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema, "description": p.description}
    if p.example is not None:
        out["example"] = p.example
    return out


def _error(code: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": ERROR_TEXT.get(code, "Not found."),
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if code == 429:
        answer["headers"] = {"Retry-After": {"schema": INTEGER, "description": "Seconds to wait."}}
    return answer


async def openapi(request: Request) -> Response:
    return JSONResponse(document(parts(request).config))
