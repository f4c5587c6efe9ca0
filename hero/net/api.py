"""Mycelium's local REST API (`/api/v1`, default 127.0.0.1:8989): same paths, JSON fields and status codes.

So a client written for Mycelium works against a Hero node. Differences, all
on the side of safety: a long-poll waits on a future and never blocks another
call (Mycelium holds its node mutex); a message is at most 16 MiB and a body
over that is a 413; malformed requests get a 400 with Hero's JSON error naming
the field. `dst.pk` may also be an agent id: the message goes to the node
that hosts the agent (found by its signed record) and becomes an event for it.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hero.errors import BadRequest, Conflict, HeroError, NotFound
from hero.net.address import address_of, in_overlay
from hero.net.inbox import InboundMessage
from hero.net.messages import MAX_MESSAGE_BYTES
from hero.net.node import OverlayNode
from hero.net.overlay import FIND_AGENT_S
from hero.net.peers import Endpoint
from hero.web.bodies import THREAD_ABOVE_BYTES, read_json

MAX_BODY = MAX_MESSAGE_BYTES * 4 // 3 + 64 * 1024  # base64 of the largest message, plus the JSON around it
MAX_TIMEOUT_S = 3600


def _node(request: Request) -> OverlayNode:
    return request.app.state.overlay


def _b64(value: Any, field: str, *, required: bool) -> bytes:
    if value is None and not required:
        return b""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a base64 string", field=field)
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64", field=field) from None


async def _payload(body: dict[str, Any]) -> bytes:
    """The message payload, decoded off the event loop when large (16 MiB of base64 takes ~60 ms here)."""
    value = body.get("payload")
    if isinstance(value, str) and len(value) > THREAD_ABOVE_BYTES:
        payload = await asyncio.to_thread(_b64, value, "payload", required=True)
    else:
        payload = _b64(value, "payload", required=True)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise BadRequest(f"payload is over the {MAX_MESSAGE_BYTES}-byte message limit", field="payload")
    return payload


async def _message_response(message: InboundMessage) -> Response:
    if len(message.payload) > THREAD_ABOVE_BYTES:
        return Response(await asyncio.to_thread(message.json_bytes), media_type="application/json")
    return Response(message.json_bytes(), media_type="application/json")


def _int_query(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > MAX_TIMEOUT_S:
        raise BadRequest(f"{name} must be a whole number of seconds, at most {MAX_TIMEOUT_S}", field=name)
    return int(raw)


def _bool_query(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name} must be true or false", field=name)
    return raw in ("true", "1")


def _pk(text: Any, field: str) -> bytes:
    if not isinstance(text, str) or len(text) != 64:
        raise BadRequest(f"{field} must be a 64-character hex public key", field=field)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BadRequest(f"{field} must be a 64-character hex public key", field=field) from None


async def resolve_dst(node: OverlayNode, dst: Any) -> tuple[bytes, bytes | None]:
    """(node public key, agent id or None) for a `dst` of `{"ip"}` or `{"pk"}`. A key that is neither a
    routed node nor a known agent is looked for as an agent (briefly); failing that it is taken as a node's
    key and the message waits for a route, as Mycelium queues it."""
    if not isinstance(dst, dict) or len(dst) != 1 or not ({"ip", "pk"} & dst.keys()):
        raise BadRequest('dst must be {"ip": ADDRESS} or {"pk": HEX}', field="dst")
    if "ip" in dst:
        try:
            ip = ipaddress.IPv6Address(dst["ip"])
        except (ipaddress.AddressValueError, ValueError, TypeError):
            raise BadRequest("dst.ip must be an IPv6 address", field="dst.ip") from None
        if not in_overlay(ip):
            raise BadRequest("dst.ip must be inside 400::/7", field="dst.ip")
        pk = node.router.public_key_of(ip.packed)
        if pk is None:
            raise NotFound(f"no route to {ip}", field="dst.ip")
        return pk, None
    pk = _pk(dst["pk"], "dst.pk")
    if node.router.public_key_of(address_of(pk).packed) is not None:
        return pk, None
    host = await node.agents.find(pk, FIND_AGENT_S)
    if host is not None:
        return host, pk
    return pk, None


async def get_messages(request: Request) -> Response:
    node = _node(request)
    timeout = _int_query(request, "timeout", 0)
    peek = _bool_query(request, "peek")
    raw_topic = request.query_params.get("topic")
    topic = _b64(raw_topic, "topic", required=True) if raw_topic is not None else None
    message = await node.messages.inbox.pop(topic=topic, timeout_s=timeout, peek=peek)
    if message is None:
        return Response(status_code=204)
    return await _message_response(message)


async def push_message(request: Request) -> Response:
    node = _node(request)
    reply_timeout = request.query_params.get("reply_timeout")
    wait = _int_query(request, "reply_timeout", 0) if reply_timeout is not None else None
    body = await read_json(request, MAX_BODY)
    pk, agent = await resolve_dst(node, body.get("dst"))
    topic = _b64(body.get("topic"), "topic", required=False)
    if len(topic) > 255:
        raise BadRequest("topic is at most 255 bytes", field="topic")
    payload = await _payload(body)
    if agent is not None and node.hosts_agent(agent.hex()):
        message = node.local_message(agent.hex(), topic, payload)
        node.deliver_local(message)
        mid = message.id
    else:
        mid = node.messages.push(pk, topic, payload, agent=agent).id.hex()
    if wait is None:
        return JSONResponse({"id": mid}, status_code=201)
    reply = await node.messages.inbox.wait_reply(mid, wait)
    if reply is None:
        return JSONResponse({"id": mid}, status_code=408)
    return await _message_response(reply)


async def reply_message(request: Request) -> Response:
    node = _node(request)
    mid = request.path_params["id"]
    if len(mid) != 16 or any(c not in "0123456789abcdef" for c in mid.lower()):
        raise BadRequest("message id must be 16 hex characters", field="id")
    body = await read_json(request, MAX_BODY)
    origin = node.messages.inbox.sender_of(mid.lower())
    if body.get("dst") is not None:
        pk, _ = await resolve_dst(node, body["dst"])
    elif origin is not None:
        pk = origin
    else:
        raise NotFound(f"no received message {mid} to reply to", field="id")
    payload = await _payload(body)
    node.messages.push(pk, _b64(body.get("topic"), "topic", required=False), payload, reply_to=mid.lower())
    return Response(status_code=204)


async def message_status(request: Request) -> Response:
    out = _node(request).messages.status(request.path_params["id"])
    if out is None:
        raise NotFound("no message with that id", field="id")
    return JSONResponse(out.info())


async def admin(request: Request) -> Response:
    return JSONResponse(_node(request).info())


async def peers(request: Request) -> Response:
    node = _node(request)
    if request.method == "GET":
        return JSONResponse(node.peers_json())
    body = await read_json(request, 4096)
    if not isinstance(body.get("endpoint"), str):
        raise BadRequest("endpoint must be a string like tcp://1.2.3.4:9651", field="endpoint")
    endpoint = Endpoint.parse(body["endpoint"])
    if not node.dialer.add(endpoint):
        raise Conflict(f"peer {endpoint} already exists", field="endpoint")
    return Response(status_code=204)


async def delete_peer(request: Request) -> Response:
    node = _node(request)
    text = unquote(request.path_params["endpoint"])
    key = str(Endpoint.parse(text))
    if not node.dialer.remove(key):
        raise NotFound(f"no peer {text}", field="endpoint")
    for link in list(node.links):
        if link.endpoint == key:
            link.close()
    return Response(status_code=204)


async def routes_selected(request: Request) -> Response:
    return JSONResponse(_node(request).router.table())


async def routes_fallback(request: Request) -> Response:
    return JSONResponse(_node(request).router.table(fallback=True))


async def routes_queried(request: Request) -> Response:
    return JSONResponse([])  # every node announces its /64 proactively: nothing is ever being queried


async def packet_stats(request: Request) -> Response:
    counters = _node(request).counters

    def rows(table: dict[str, list[int]]) -> list[dict[str, Any]]:
        return [
            {"ip": str(ipaddress.IPv6Address(bytes.fromhex(k) + bytes(8))), "packetCount": v[0], "byteCount": v[1]}
            for k, v in table.items()
        ]

    return JSONResponse({"bySource": rows(counters.by_source), "byDestination": rows(counters.by_destination)})


async def pubkey(request: Request) -> Response:
    try:
        ip = ipaddress.IPv6Address(request.path_params["ip"])
    except (ipaddress.AddressValueError, ValueError):
        raise BadRequest("not an IPv6 address", field="ip") from None
    pk = _node(request).router.public_key_of(ip.packed)
    if pk is None:
        raise NotFound(f"no route to {ip}", field="ip")
    return JSONResponse({"publicKey": pk.hex()})


async def hero_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HeroError)
    status = 400 if exc.status == 422 else exc.status
    return JSONResponse(exc.to_json(), status_code=status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": {"message": exc.detail, "type": "http_error"}}, status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": {"message": "internal server error", "type": "internal_error"}}, status_code=500)


def create_api(node: OverlayNode) -> Starlette:
    p = "/api/v1"
    app = Starlette(
        routes=[
            Route(f"{p}/admin", admin, methods=["GET"]),
            Route(f"{p}/admin/peers", peers, methods=["GET", "POST"]),
            Route(f"{p}/admin/peers/{{endpoint:path}}", delete_peer, methods=["DELETE"]),
            Route(f"{p}/admin/routes/selected", routes_selected, methods=["GET"]),
            Route(f"{p}/admin/routes/fallback", routes_fallback, methods=["GET"]),
            Route(f"{p}/admin/routes/queried", routes_queried, methods=["GET"]),
            Route(f"{p}/admin/stats/packets", packet_stats, methods=["GET"]),
            Route(f"{p}/pubkey/{{ip}}", pubkey, methods=["GET"]),
            Route(f"{p}/messages", get_messages, methods=["GET"]),
            Route(f"{p}/messages", push_message, methods=["POST"]),
            Route(f"{p}/messages/reply/{{id}}", reply_message, methods=["POST"]),
            Route(f"{p}/messages/status/{{id}}", message_status, methods=["GET"]),
        ],
        exception_handlers={HeroError: hero_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.overlay = node
    return app
