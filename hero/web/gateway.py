"""The gateway: in a cluster, any node's web API serves any user, by sending their agent's requests to the
node that hosts it.

A request that reaches a user's own agent (chat, `/api/me` and what is under it, `/mcp`) is looked at
first: if this node runs the agent, the app answers it here; if another node holds the agent's lease,
the request goes there as it came (the same token: every node of a cluster verifies every token),
and the answer, a stream included, comes back byte for byte; if no node holds it, placement picks the
node it wakes on. A request a gateway of this cluster sent on carries a marker (`x-hero-routed`, an HMAC
keyed from the cluster key: `hero.web.routemark`) and is answered where it lands; a marker a client made
is dropped, and its request routed like any other. A node that
cannot be reached is reported to the directory, which frees its agents at once if it is gone; the
request waits for that, up to `failover_wait_s`, then is a 503 with Retry-After. An agent this node
thought free but that another node took meanwhile (the app's 409 `lease_held`) is asked for again.
An event stream answered here holds the agent here while it is open, so what the agent publishes
reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import httpx
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hero.errors import HeroError, LeaseHeld, Unavailable
from hero.seams.cluster import ClusterRouting
from hero.seams.users import UserRegistry
from hero.web.routemark import RouteMarker

log = logging.getLogger("hero.web")

ROUTED = b"x-hero-routed"  # the marker on a request a gateway sent on: it is answered where it lands
NODE = b"x-hero-node"  # on an agent's answer: the node that ran it (an operator sees where a request went)
AGENT_PATHS = ("/v1/chat/completions", "/api/me", "/mcp")
EVENTS = "/api/me/events"
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"host",
       b"proxy-authorization", b"proxy-authenticate", b"content-length"}
OWNER_CACHE_S = 2.0  # how long a gateway trusts what the directory said of where an agent runs
OVERLAY = ipaddress.ip_network("400::/7")


class _Moved(Exception):
    """The app refused: another node took the agent meanwhile (409 lease_held)."""


class Gateway:
    """ASGI middleware around the node's app."""

    def __init__(self, app: ASGIApp, cluster: ClusterRouting, users: UserRegistry, *, max_body: int,
                 route_key: bytes) -> None:
        self.app = app
        self.cluster = cluster
        self.users = users
        self.marker = RouteMarker(route_key, cluster.node_id)
        self.max_body = max_body
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), limits=httpx.Limits(
            max_connections=512, max_keepalive_connections=64), trust_env=False)
        self.forwarded = 0
        self.failovers = 0
        self.forged = 0  # requests whose routing marker no gateway of this cluster made
        self._owners: dict[str, tuple[str, str, float]] = {}  # agent -> (node id, url, until monotonic)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(AGENT_PATHS):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        agent_id = await self._agent_of(headers)
        if agent_id is None:  # not a user's token: the app answers (401, 403…)
            await self.app(scope, receive, send)
            return
        marker = headers.get(ROUTED.decode())
        if marker is not None:
            if self.marker.check(marker, scope["method"], path, agent_id):  # sent here by a gateway: answered here
                await self._here(scope, receive, send, agent_id)
                return
            self.forged += 1
            if self.forged & (self.forged - 1) == 0:  # the 1st, 2nd, 4th, 8th…: a client repeating it floods no log
                log.warning("gateway: dropped an x-hero-routed header no gateway of this cluster made (client %s; "
                            "%d so far)", (scope.get("client") or ("?",))[0], self.forged)
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != ROUTED]}
        body, whole = await _read_body(receive, self.max_body)
        if not whole:  # too large: the app says so (413), here
            await self.app(scope, _replay(body, receive), send)
            return
        if self.cluster.holds(agent_id):
            with contextlib.suppress(_Moved):  # it moved away meanwhile: routed to where it is now
                await self._here(scope, _replay(body, receive), send, agent_id, catch_moved=True)
                return
        await self._route(scope, receive, send, agent_id, body)

    async def _agent_of(self, headers: Headers) -> str | None:
        """The agent a user token names; None for anything else (the app answers it, 401s included)."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            claims = await self.users.authenticate(token.strip())
        except HeroError:
            return None
        return claims.sub if claims.role == "user" else None

    async def _route(self, scope: Scope, receive: Receive, send: Send, agent_id: str, body: bytes) -> None:
        deadline = time.monotonic() + self.cluster.failover_wait_s
        while True:
            try:
                target = await self._where(agent_id, scope)
            except Unavailable as exc:
                await _error(send, exc.message, retry_after=self.cluster.failover_wait_s)
                return
            if target is None:
                try:
                    await self._here(scope, _replay(body, receive), send, agent_id, catch_moved=True)
                    return
                except _Moved:
                    self._owners.pop(agent_id, None)
                    continue
            node_id, url = target
            outcome = await self._forward(scope, receive, send, node_id, url, body, agent_id)
            if outcome == "answered":
                self.forwarded += 1
                return
            self._owners.pop(agent_id, None)
            if outcome == "moved":  # that node no longer hosts it: ask again
                continue
            # its node did not answer: is it gone?
            self.failovers += 1
            try:
                gone = await self.cluster.suspect(node_id)
                owner = None if gone else await self.cluster.owner(agent_id)
            except Unavailable:
                owner = None
            wait = 0.0 if owner is None or owner.node_id != node_id else max(0.0, owner.remaining_s)
            if time.monotonic() + wait > deadline:
                await _error(send, f"the node hosting this agent ({node_id[:12]}…) does not answer; it is free "
                             f"again in {wait:.0f}s", retry_after=wait)
                return
            await asyncio.sleep(max(wait, 0.05))

    async def _where(self, agent_id: str, scope: Scope) -> tuple[str, str] | None:
        """(node id, url) of the node that should answer; None: this one."""
        cached = self._owners.get(agent_id)
        if cached is not None and cached[2] > time.monotonic():
            return cached[0], cached[1]
        owner = await self.cluster.owner(agent_id)
        me = self.cluster.node_id
        if owner is not None:
            if owner.node_id == me or not owner.url:
                return None
            target = (owner.node_id, owner.url)
        else:
            client = scope.get("client")
            near = {me: 0.0} if client and _on_overlay(client[0]) else {}  # the user reached this node directly
            node = self.cluster.place(agent_id, latency_ms=near)
            if node is None or node.get("node_id") == me or not node.get("url"):
                return None
            target = (str(node["node_id"]), str(node["url"]))
        self._owners[agent_id] = (*target, time.monotonic() + OWNER_CACHE_S)
        return target

    async def _here(self, scope: Scope, receive: Receive, send: Send, agent_id: str, *,
                    catch_moved: bool = False) -> None:
        """The app answers. With `catch_moved`, a 409 lease_held before anything was sent raises `_Moved`."""
        send = _stamped(send, self.cluster.node_id.encode())
        if scope["path"] != EVENTS:
            await self._app(scope, receive, send, catch_moved)
            return
        try:
            anchor = self.cluster.anchored(agent_id)
            await anchor.__aenter__()
        except LeaseHeld as exc:
            if catch_moved:
                raise _Moved from None
            await _send_error(send, exc, 409)  # the gateway that sent it here asks the directory again
            return
        except Unavailable as exc:
            await _error(send, exc.message, retry_after=self.cluster.failover_wait_s)
            return
        try:
            await self._app(scope, receive, send, catch_moved)
        finally:
            await anchor.__aexit__(None, None, None)

    async def _app(self, scope: Scope, receive: Receive, send: Send, catch_moved: bool) -> None:
        if not catch_moved:
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def watch(message: Message) -> None:
            if held or (message["type"] == "http.response.start" and message["status"] == 409):
                held.append(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    if _is_lease_held(b"".join(m.get("body", b"") for m in held[1:])):
                        raise _Moved
                    for kept in held:
                        await send(kept)
                return
            await send(message)

        await self.app(scope, receive, watch)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, node_id: str, url: str,
                       body: bytes, agent_id: str) -> str:
        """Relay the request to `url` and its answer back: "answered"; or, with nothing sent yet, "unreachable"
        (no answer, or its node left the cluster while we waited: frozen, cut off) or "moved" (that node does
        not host the agent: 409 lease_held). A node that leaves mid-answer ends the answer there."""
        target = url.rstrip("/") + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP]
        headers.append((ROUTED, self.marker.make(scope["method"], scope["path"], agent_id)))
        request = self.client.build_request(scope["method"], target, headers=headers, content=body)
        gone = asyncio.ensure_future(self.cluster.gone(node_id))
        try:
            return await self._exchange(request, receive, send, url, gone)
        finally:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)

    async def _exchange(self, request: httpx.Request, receive: Receive, send: Send, url: str,
                        gone: asyncio.Future[None]) -> str:
        sending = asyncio.ensure_future(self.client.send(request, stream=True))
        try:
            await asyncio.wait([sending, cast("asyncio.Future[Any]", gone)], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sending.done():
                sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        if sending.cancelled():
            log.warning("gateway: node at %s left the cluster before it answered", url)
            return "unreachable"
        if isinstance(sending.exception(), httpx.TransportError):
            log.warning("gateway: node at %s does not answer (%s)", url, type(sending.exception()).__name__)
            return "unreachable"
        response = sending.result()
        try:
            read = await response.aread() if response.status_code == 409 else None
            if read is not None and _is_lease_held(read):
                return "moved"
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP]})
            relay = asyncio.ensure_future(self._relay(response, send, read))
            left = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait([relay, left, cast("asyncio.Future[Any]", gone)],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (relay, left):
                    task.cancel()
                await asyncio.gather(relay, left, return_exceptions=True)
            if relay.done() and not relay.cancelled() and relay.exception() is not None:
                log.warning("gateway: the stream from %s broke: %r", url, relay.exception())
            elif gone.done():
                log.warning("gateway: node at %s left the cluster mid-answer", url)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return "answered"

    @staticmethod
    async def _relay(response: httpx.Response, send: Send, read: bytes | None) -> None:
        if read is not None:  # already read whole (a 409 that was not about the lease)
            await send({"type": "http.response.body", "body": read, "more_body": True})
        else:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body, and whether it was read whole (False: over `limit`, what was read so far)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
        if not message.get("more_body"):
            return b"".join(chunks), True


def _stamped(send: Send, node_id: bytes) -> Send:
    """A send that names this node on the answer's headers."""

    async def stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (NODE, node_id)]}
        await send(message)

    return stamped


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` first (as one message), then whatever the client sends (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _is_lease_held(body: bytes) -> bool:
    try:
        return bool(json.loads(body)["error"]["type"] == LeaseHeld.code)
    except (ValueError, KeyError, TypeError):
        return False


def _on_overlay(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) in OVERLAY
    except ValueError:
        return False


async def _send_error(send: Send, exc: HeroError, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(exc.to_json()).encode(), "more_body": False})


async def _error(send: Send, message: str, *, retry_after: float) -> None:
    body = json.dumps({"error": {"message": message, "type": Unavailable.code}}).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"retry-after", str(max(1, round(retry_after))).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def routing_view(nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The nodes as the dashboard shows them."""
    keys = ("node_id", "name", "url", "watts", "budget_w", "headroom_w", "over_budget", "active", "agents")
    return [{k: n.get(k) for k in keys} for n in nodes]
