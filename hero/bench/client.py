"""One simulated user's side of the HTTP API, timed: a streamed chat message, the agent's state,
its history, and its live event stream (where reminders arrive)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

ANSWERED, REFUSED, FAILED, UNFINISHED = "answered", "refused", "failed", "unfinished"


@dataclass
class MessageResult:
    user: int
    kind: str
    sent_s: float  # seconds after the run started
    status: str = FAILED  # answered | refused (429) | failed (an error: lost) | unfinished (still going at the end)
    http_status: int | None = None
    error: str | None = None
    woke: bool = False  # the agent was hibernated when the session began (this was its first message)
    accept_s: float | None = None  # request → response headers: the message is durable in the history
    ttft_s: float | None = None  # request → first content
    total_s: float | None = None  # request → end of the reply
    completion_tokens: int = 0
    prompt_tokens: int = 0
    text: str = field(default="", repr=False)
    request_text: str = field(default="", repr=False)


def make_client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=30.0), trust_env=False)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def chat(client: httpx.AsyncClient, url: str, token: str, result: MessageResult) -> MessageResult:
    """Send one message as a streaming chat completion and time it; never raises for HTTP or stream errors."""
    body = {"model": "hero", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": result.request_text}]}
    started = time.perf_counter()
    parts: list[str] = []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=auth(token)) as response:
            result.http_status = response.status_code
            result.accept_s = time.perf_counter() - started
            if response.status_code == 429:
                result.status = REFUSED
                result.error = (await response.aread()).decode(errors="replace")[:200]
                return result
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:300]
                return result
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:  # after acceptance: the message is kept, its reply refused or failed
                    result.error = "in stream: " + json.dumps(chunk["error"])[:300]
                    if chunk["error"].get("type") == "overloaded":  # an explicit refusal, as a 429 is
                        result.status = REFUSED
                    return result
                if chunk.get("usage"):
                    result.completion_tokens = int(chunk["usage"].get("completion_tokens", 0))
                    result.prompt_tokens = int(chunk["usage"].get("prompt_tokens", 0))
                for choice in chunk.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        if result.ttft_s is None:
                            result.ttft_s = time.perf_counter() - started
                        parts.append(content)
            if not done:
                result.error = "the stream ended without [DONE]"
                return result
            result.total_s = time.perf_counter() - started
            result.text = "".join(parts)
            result.status = ANSWERED
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


async def agent_status(client: httpx.AsyncClient, url: str, token: str) -> str | None:
    """`active` or `hibernated` (what a chat app reads when it opens), None if the call failed."""
    try:
        response = await client.get(f"{url}/api/me", headers=auth(token))
        return str(response.json()["agent_status"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def history(client: httpx.AsyncClient, url: str, token: str) -> list[dict[str, Any]]:
    """The agent's whole history, oldest first (paged backwards)."""
    out: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, int] = {"limit": 500}
        if before is not None:
            params["before"] = before
        response = await client.get(f"{url}/api/me/messages", params=params, headers=auth(token))
        response.raise_for_status()
        page = response.json()
        out[:0] = page["messages"]
        if not page["has_more"]:
            return out
        before = page["next_before"]


class EventWatch:
    """A user's `/api/me/events` stream, held while they wait for reminders; records when each arrives."""

    def __init__(self, client: httpx.AsyncClient, url: str, token: str, clock: Callable[[], float]) -> None:
        self.client, self.url, self.token, self.clock = client, url, token, clock
        self.arrived: dict[str, float] = {}  # reminder text → run-relative arrival time
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.error: str | None = None
        self.closed = False  # set before cancelling: a cancellation may surface as a transport error

    async def run(self) -> None:
        """Read the stream until cancelled; reconnect (from the last seen event) if it drops."""
        last = 0
        while not self.closed:
            headers = auth(self.token)
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                async with self.client.stream("GET", f"{self.url}/api/me/events", headers=headers) as response:
                    if response.status_code != 200:
                        self.error = f"events: HTTP {response.status_code}"
                        self.ready.set()
                        return
                    event = ""
                    async for line in response.aiter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("id:"):
                            last = int(line[3:].strip() or 0)
                        elif line.startswith("data:"):
                            if event == "ready":
                                self.ready.set()
                            elif event == "message":
                                self._message(json.loads(line[5:]))
            except (httpx.HTTPError, ValueError) as exc:
                if self.closed:
                    return
                self.error = f"events: {type(exc).__name__}"
            await asyncio.sleep(1.0)  # the stream dropped: reconnect after the server's retry delay

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("kind") == "reminder":
            self.arrived.setdefault(str(message.get("content", "")), self.clock())
            self.changed.set()
