"""External daemon mode: Hero as a client of a Mycelium daemon's REST API (`overlay = "external"`).

The node rides an existing Mycelium network instead of running its own
overlay: it long-polls the daemon's `GET /api/v1/messages` (an event-driven
wait: the daemon answers when a message comes), pushes with `POST
/api/v1/messages` (and `?reply_timeout=` when an agent waits for its answer)
and answers with `POST /api/v1/messages/reply/{id}`. Messages for an agent
carry the topic `hero/agent/<agent id>` (overlay.py); a daemon's messages
have no agent fields, so agents elsewhere are named by their node (address or
key) plus `agent`, and replies a waiter missed go to the agent they name by
topic. The node takes every message from the daemon's queue: give Hero a
daemon of its own. A message no local agent takes is dropped and counted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from typing import Any

import httpx

from hero.errors import BadRequest, HeroError, NotFound, Unavailable, UsageError
from hero.net.inbox import InboundMessage
from hero.net.overlay import Handler, Target, agent_in_topic, agent_topic, parse_to
from hero.nursery import Nursery

log = logging.getLogger("hero.net")

POLL_S = 30  # the long-poll's timeout, seconds: the daemon answers at once when a message comes
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class ExternalOverlay:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(10.0, read=POLL_S + 15),
                                          trust_env=False)
        self._handlers: list[Handler] = []
        self._nursery = Nursery("overlay-external")
        self._local: dict[str, asyncio.Future[InboundMessage]] = {}  # our own messages to our own agents
        self.info: dict[str, Any] = {}
        self.connected = False
        self.last_error: str | None = None
        self.received = 0
        self.sent = 0
        self.unclaimed = 0

    async def start(self) -> None:
        """Ask the daemon who it is (UsageError if it does not answer), then keep its message queue drained."""
        try:
            r = await self._client.get("/api/v1/admin")
            r.raise_for_status()
            self.info = r.json()
            if not isinstance(self.info.get("nodePubkey"), str):
                raise ValueError("no nodePubkey in its /api/v1/admin answer")
        except (httpx.HTTPError, ValueError) as exc:
            await self._client.aclose()
            raise UsageError(f"the Mycelium daemon at {self.base_url} does not answer: {exc}") from None
        self.connected = True
        self._nursery.spawn(self._poll(), name="overlay-external-poll")

    async def aclose(self) -> None:
        await self._nursery.aclose()
        await self._client.aclose()

    # the Overlay protocol

    @property
    def public_key(self) -> str:
        return str(self.info.get("nodePubkey", ""))

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def target(self, to: str, agent: str | None) -> Target:
        ip, key = parse_to(to, agent)
        if ip is not None:
            r = await self._call("GET", f"/api/v1/pubkey/{ip}")
            return Target(r.json()["publicKey"], ip, agent)
        return Target(key, None, agent)

    async def send(self, target: Target, topic: bytes, payload: bytes, *, sender: str | None,
                   wait_s: float | None) -> InboundMessage | None:
        if target.agent is not None:
            topic = agent_topic(target.agent)
        if target.key == self.public_key:
            return await self._send_local(target.agent, topic, payload, sender, wait_s)
        dst = {"pk": target.key} if target.key else {"ip": target.ip}
        body = {"dst": dst, "topic": _b64(topic), "payload": _b64(payload)}
        params = {"reply_timeout": str(max(1, round(wait_s)))} if wait_s else None
        r = await self._call("POST", "/api/v1/messages", json=body, params=params, extra_s=wait_s or 0)
        self.sent += 1
        return _message(r.json(), reply=True) if r.status_code == 200 else None

    async def reply(self, message: InboundMessage, payload: bytes, *, sender: str | None) -> None:
        if message.src_pk == self.public_key:  # one of our agents asked another: no daemon between
            answer = InboundMessage(message.id, message.dst_ip, self.public_key, message.src_ip, self.public_key,
                                    message.topic, payload, True, message.src_agent, sender)
            waiter = self._local.pop(message.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(answer)
            elif message.src_agent is not None:
                self._arrived(answer)
            return
        body = {"dst": {"pk": message.src_pk}, "topic": _b64(message.topic), "payload": _b64(payload)}
        await self._call("POST", f"/api/v1/messages/reply/{message.id}", json=body)

    def publish(self, agent_id: str) -> None:
        """A Mycelium daemon keeps no agent records: agents here are reached by this node's key plus `agent`."""

    def l3_address(self) -> str | None:
        """The daemon's address: its TUN holds it when the daemon runs on this host (binding it tells)."""
        address = self.info.get("nodeIp")
        return address if isinstance(address, str) else None

    async def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.info, "mode": "external", "daemon": self.base_url, "connected": self.connected,
                               "lastError": self.last_error, "received": self.received, "sent": self.sent,
                               "unclaimed": self.unclaimed, "peers": [], "routes": []}
        try:
            out["peers"] = (await self._call("GET", "/api/v1/admin/peers")).json()
            out["routes"] = (await self._call("GET", "/api/v1/admin/routes/selected")).json()
        except HeroError as exc:
            out["lastError"] = exc.message
        return out

    # inside

    async def _poll(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                r = await self._client.get("/api/v1/messages", params={"timeout": POLL_S})
                if r.status_code == 200:
                    self._arrived(_message(r.json(), reply=False))
                elif r.status_code != 204:
                    raise httpx.HTTPStatusError(f"status {r.status_code}", request=r.request, response=r)
                self.connected, self.last_error, backoff = True, None, BACKOFF_MIN_S
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                if self.connected:
                    log.warning("overlay: the Mycelium daemon at %s: %s (retrying)", self.base_url, exc)
                self.connected, self.last_error = False, str(exc) or type(exc).__name__
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _arrived(self, message: InboundMessage) -> None:
        self.received += 1
        for handler in self._handlers:
            if handler(message):
                return
        self.unclaimed += 1
        log.info("overlay: message %s from %s for no agent here (topic %r) dropped", message.id,
                 message.src_pk[:12], message.topic[:40])

    async def _send_local(self, agent: str | None, topic: bytes, payload: bytes, sender: str | None,
                          wait_s: float | None) -> InboundMessage | None:
        ip = str(self.info.get("nodeIp", ""))
        message = InboundMessage(secrets.token_bytes(8).hex(), ip, self.public_key, ip, self.public_key, topic,
                                 payload, False, agent, sender)
        if not wait_s:
            self._arrived(message)
            return None
        waiter: asyncio.Future[InboundMessage] = asyncio.get_running_loop().create_future()
        self._local[message.id] = waiter
        self._arrived(message)
        try:
            async with asyncio.timeout(wait_s):
                return await waiter
        except TimeoutError:
            return None
        finally:
            self._local.pop(message.id, None)

    async def _call(self, method: str, path: str, *, extra_s: float = 0, **kw: Any) -> httpx.Response:
        """One API call; the daemon's 4xx become our typed errors (its message kept), no answer is Unavailable."""
        try:
            r = await self._client.request(method, path, timeout=10.0 + extra_s, **kw)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the Mycelium daemon at {self.base_url} does not answer: {exc}") from None
        if r.status_code in (404, 400, 409, 413):
            message = _error_text(r)
            raise (NotFound if r.status_code == 404 else BadRequest)(f"the Mycelium daemon says: {message}")
        if r.status_code >= 500:
            raise Unavailable(f"the Mycelium daemon failed ({r.status_code}): {_error_text(r)}")
        return r


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _message(body: dict[str, Any], *, reply: bool) -> InboundMessage:
    """Mycelium's InboundMessage JSON as ours (ValueError/KeyError if it is not one)."""
    try:
        topic = base64.b64decode(body.get("topic") or "", validate=True)
        payload = base64.b64decode(body["payload"], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64 from the daemon: {exc}") from None
    return InboundMessage(str(body["id"]), str(body["srcIp"]), str(body["srcPk"]), str(body["dstIp"]),
                          str(body["dstPk"]), topic, payload, reply, agent_in_topic(topic))


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        return str(body.get("error", {}).get("message") or body)
    except ValueError:
        return r.text[:200] or f"status {r.status_code}"
