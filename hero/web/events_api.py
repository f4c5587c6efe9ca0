"""Live messages of the user's own agent as Server-Sent Events: `GET /api/me/events`.

Replies, reminders and messages from other devices or agents arrive here
without a reload. Each event's `id` is the message's `seq`, so a phone that
drops the connection reconnects with `Last-Event-ID` (or `?last_event_id=`)
and first gets every message it missed from the history, then the live ones.
We subscribe *before* reading the history and drop anything already sent, so
a message added between the two reads is neither lost nor sent twice.

The stream ends when the token expires or is revoked (an `auth` event says
why), so a client is asked to sign in again instead of listening forever; when
the node shuts down it ends with an `error` event and a `done` event (`[DONE]`).

A user holds at most `MAX_STREAMS_PER_USER` open streams (every device and
tab holds one); past that the answer is 429 `too_many_streams`, so one user
cannot tie up the node's connections.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hero.errors import BadRequest, HeroError, TooManyStreams
from hero.identity import TokenClaims
from hero.seams.chat import Entry
from hero.web import shutdown
from hero.web.auth import bearer, require_user
from hero.web.parts import parts

RECHECK_S = 30.0  # how often a quiet stream re-checks its token (revocation reaches open streams too)
RETRY_MS = 2000  # what the client should wait before reconnecting
MAX_STREAMS_PER_USER = 16


def last_event_id(request: Request) -> int:
    """The last seq the client has seen: the `Last-Event-ID` header wins over the query parameter."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("Last-Event-ID must be a message seq (an integer)", field="last_event_id") from None
    if value < 0:
        raise BadRequest("Last-Event-ID must not be negative", field="last_event_id")
    return value


class StreamSlots:
    """How many event streams each user has open, against a cap; one per app."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: dict[str, int] = {}

    def take(self, agent_id: str) -> None:
        held = self._open.get(agent_id, 0)
        if held >= self.per_user:
            raise TooManyStreams(
                f"you already have {held} open event streams (at most {self.per_user}): close one",
                retry_after=RETRY_MS / 1000,
            )
        self._open[agent_id] = held + 1

    def give_back(self, agent_id: str) -> None:
        held = self._open.pop(agent_id) - 1
        if held:
            self._open[agent_id] = held


class _HeldStream(EventSourceResponse):
    """An event stream that gives its user's slot back when it ends, however it ends."""

    def __init__(
        self, content: AsyncIterator[dict[str, Any]], *, slots: StreamSlots, agent_id: str, stop: anyio.Event
    ) -> None:
        super().__init__(
            content,
            ping=15,
            send_timeout=30,
            headers={"Cache-Control": "no-cache"},
            shutdown_event=stop,
            shutdown_grace_period=shutdown.GRACE_S,
        )
        self._slots = slots
        self._agent_id = agent_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give_back(self._agent_id)


async def my_events(request: Request) -> Response:
    claims = await require_user(request)
    since = last_event_id(request)
    slots: StreamSlots = request.app.state.event_streams
    slots.take(claims.sub)
    stop = anyio.Event()
    return _HeldStream(_events(request, claims, since, stop), slots=slots, agent_id=claims.sub, stop=stop)


def _event(entry: Entry) -> dict[str, Any]:
    return {"event": "message", "id": str(entry.seq), "data": json.dumps(entry.to_json(), separators=(",", ":"))}


async def _events(
    request: Request, claims: TokenClaims, since: int, stop: anyio.Event
) -> AsyncIterator[dict[str, Any]]:
    chat = parts(request).chat
    with chat.subscribe(claims.sub) as live:
        yield {"retry": RETRY_MS, "event": "ready", "data": json.dumps({"last_event_id": since})}
        sent = since
        if since > 0:
            for entry in await chat.after(claims.sub, sent):
                sent = entry.seq
                yield _event(entry)
        try:
            async with shutdown.on_shutdown(stop, lambda: live.interrupt(shutdown.shutting_down())):
                while True:
                    wait = max(0.1, min(RECHECK_S, claims.exp - time.time()))
                    try:
                        entry = await asyncio.wait_for(live.get(), wait)
                    except TimeoutError:
                        reason = await _still_valid(request)
                        if reason is not None:
                            error = {"error": {"message": reason, "type": "unauthorized"}}
                            yield {"event": "auth", "data": json.dumps(error)}
                            return
                        continue
                    if entry.seq > sent:
                        sent = entry.seq
                        yield _event(entry)
        except HeroError as exc:  # the node is shutting down: say so, then end
            yield {"event": "error", "data": json.dumps(exc.to_json())}
            yield {"event": "done", "data": "[DONE]"}


async def _still_valid(request: Request) -> str | None:
    """None if the stream's token still authenticates, else why not (expired, revoked)."""
    try:
        await parts(request).users.authenticate(bearer(request))
    except HeroError as exc:
        return exc.message
    return None


def routes() -> list[Route]:
    return [Route("/api/me/events", my_events, methods=["GET"])]
