"""What a skill sees during a call (`SkillContext`), and how every call is run: within its permissions, its time
limit and its storage quota, its failures contained, its CPU time charged to the agent.

A skill's state is its own slot of the agent's state (`state["skills"][name]`),
persisted with the agent (hibernation, QSS); it never sees another skill's slot
or another agent's state. Anything outside the manifest's permissions raises
`PermissionDenied` naming the skill and what it asked for.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from hero.errors import HeroError, PermissionDenied, SkillFailed
from hero.runtime.agent import AgentContext
from hero.runtime.events import OverlayMessage
from hero.seams.power import Metering
from hero.skills.manifest import AGENT, Manifest

log = logging.getLogger("hero.skills")
SLOT = "skills"  # the agent state's key for the skills' slots
TIMER_PREFIX = "skill:"  # a skill's timers are named skill:<name>
MAX_FETCH_BYTES = 1 << 20


class AgentPower(Protocol):
    def agent_report(self, agent_id: str) -> dict[str, Any]: ...


@dataclass
class SkillServices:
    """Node-wide services a skill call may use (each only within the skill's permissions)."""

    power: AgentPower | None = None
    metering: Metering | None = None
    http: httpx.AsyncClient | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchResult:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class SkillTimeout(BaseException):
    """Raised inside a plain function's worker thread that ran past its skill's time limit."""


def slot(state: dict[str, Any], skill: str) -> dict[str, Any]:
    slots = state.setdefault(SLOT, {})
    value = slots.get(skill)
    if not isinstance(value, dict):
        value = slots[skill] = {}
    return value


def timer_name(skill: str) -> str:
    return TIMER_PREFIX + skill


class SkillContext:
    """One skill's view of its agent for one call."""

    def __init__(self, manifest: Manifest, agent: AgentContext, services: SkillServices,
                 *, interactive: bool = True) -> None:
        self.manifest = manifest
        self.skill = manifest.name
        self.permissions = manifest.permissions
        self.agent_id = agent.agent_id
        self.state = slot(agent.state, manifest.name)
        self.interactive = interactive
        self._agent = agent
        self._services = services

    def _deny(self, what: str, grant: str) -> PermissionDenied:
        return PermissionDenied(f"skill {self.skill} may not {what}: its manifest does not grant {grant}")

    # timers

    async def set_timer(self, delay_s: float, payload: dict[str, Any] | None = None) -> str:
        """A durable timer: in `delay_s` seconds the skill's on_timer handler gets `payload`, even after a restart."""
        if not self.permissions.timers:
            raise self._deny("set timers", "timers")
        timer = await self._agent.set_timer(delay_s, timer_name(self.skill), payload or {},
                                            interactive=self.interactive)
        return timer.timer_id

    async def cancel_timer(self, timer_id: str) -> None:
        if not self.permissions.timers:
            raise self._deny("cancel timers", "timers")
        await self._agent.cancel_timer(timer_id)

    # the model

    async def ask_llm(self, messages: list[dict[str, str]] | str, *, max_tokens: int = 128,
                      grammar: str | None = None) -> str:
        """A completion from the node's model, charged to this agent."""
        if not self.permissions.llm:
            raise self._deny("use the model", "llm")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        options: dict[str, Any] = {"max_tokens": max_tokens, "interactive": self.interactive}
        if grammar is not None:
            options["grammar"] = grammar
        parts = [delta async for delta in self._agent.llm.stream(self.agent_id, messages, **options)]
        return "".join(parts).strip()

    # other agents

    async def send(self, agent_id: str, text: str, *, node: str | None = None, topic: bytes = b"",
                   wait_s: float | None = None) -> OverlayMessage | None:
        """Send `text` to agent `agent_id` (found by the overlay, or on node `node`); with `wait_s`, the answer."""
        if not AGENT.match(agent_id):
            raise PermissionDenied(f"skill {self.skill}: {agent_id!r} is not an agent id (64 hex digits)")
        if not self.permissions.may_message(agent_id):
            raise self._deny(f"message agent {agent_id[:16]}…", "that agent (permission agents)")
        if node is None:
            return await self._agent.send(agent_id, text, topic=topic, wait_s=wait_s)
        return await self._agent.send(node, text, agent=agent_id, topic=topic, wait_s=wait_s)

    # the network

    def check_url(self, url: str) -> tuple[str, int]:
        """The host and port of `url` if the skill may reach them; `PermissionDenied` otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermissionDenied(f"skill {self.skill}: {url!r} is not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not self.permissions.may_reach(parts.hostname, port):
            raise self._deny(f"reach {parts.hostname}:{port}", "that host (permission hosts)")
        return parts.hostname, port

    async def fetch(self, url: str, *, method: str = "GET", json_body: Any = None,
                    headers: Mapping[str, str] | None = None, timeout_s: float = 10.0) -> FetchResult:
        """An HTTP request to a host the manifest grants (redirects are not followed: each host must be granted)."""
        self.check_url(url)
        client = self._services.http
        if client is None:
            raise PermissionDenied(f"skill {self.skill}: this node gives skills no network")
        request = client.build_request(method, url, json=json_body, headers=dict(headers or {}), timeout=timeout_s)
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_FETCH_BYTES:
                    raise SkillFailed(f"skill {self.skill}: {url} answered over {MAX_FETCH_BYTES} bytes")
        finally:
            await response.aclose()
        return FetchResult(response.status_code, dict(response.headers), body.decode("utf-8", errors="replace"))

    # the agent's own figures

    def power(self) -> dict[str, Any] | None:
        """This agent's power figures (watts, Wh today) from the node's power part; None if it runs none."""
        power = self._services.power
        return power.agent_report(self.agent_id) if power is not None else None

    def service(self, name: str) -> Any:
        return self._services.extra.get(name)

    # running a call

    async def call(self, fn: Callable[..., Any], *args: Any, what: str) -> Any:
        """Run one of the skill's functions as `fn(self, *args)`: within the time limit, its state within the
        quota (else rolled back), its failure a `SkillFailed` (logged) and never the agent's."""
        before = json.dumps(self.state)
        limit_s = self.permissions.time_limit_s
        started = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(fn):
                async with asyncio.timeout(limit_s) as deadline:
                    try:
                        result = await fn(self, *args)
                    except TimeoutError:
                        if deadline.expired():
                            raise
                        raise SkillFailed(f"skill {self.skill}: {what} timed out") from None
            else:
                result = await self._in_thread(fn, (self, *args), limit_s, what)
        except TimeoutError:
            self._restore(before)
            log.warning("agent %s: skill %s: %s ran past its time limit of %g s", self.agent_id[:12], self.skill,
                        what, limit_s)
            raise SkillFailed(f"skill {self.skill}: {what} ran past its time limit of {limit_s:g} s") from None
        except HeroError:
            self._restore(before)
            raise
        except Exception as exc:
            self._restore(before)
            log.exception("agent %s: skill %s: %s raised", self.agent_id[:12], self.skill, what)
            raise SkillFailed(f"skill {self.skill}: {what} failed ({type(exc).__name__}: {_short(exc)})") from None
        size = len(json.dumps(self.state))
        if size > self.permissions.storage_bytes and self.state:  # an empty slot costs nothing
            self._restore(before)
            raise PermissionDenied(f"skill {self.skill}: its state would be {size} bytes, over its storage quota "
                                   f"of {self.permissions.storage_kb} KB; the change was undone")
        log.debug("skill %s: %s took %.1f ms", self.skill, what, (time.perf_counter() - started) * 1e3)
        return result

    def _restore(self, before: str) -> None:
        self.state.clear()
        self.state.update(json.loads(before))

    async def _in_thread(self, fn: Callable[..., Any], args: tuple[Any, ...], limit_s: float, what: str) -> Any:
        """A plain function in a thread of its own, never on the loop; its CPU time is charged to the agent. Past
        the limit it is interrupted (`SkillTimeout` raised in it at its next Python instruction)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[bool, Any]] = loop.create_future()
        metering, agent_id = self._services.metering, self.agent_id

        def settle(outcome: tuple[bool, Any], cpu_ns: int) -> None:
            if metering is not None:
                metering.charge_llm(agent_id, cpu_ns, 0)  # off-loop CPU, as inference is
            if not done.done():
                done.set_result(outcome)

        def target() -> None:
            started = time.thread_time_ns()
            outcome: tuple[bool, Any]
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # handed to the awaiting turn, which decides what it means
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(settle, outcome, time.thread_time_ns() - started)
            except RuntimeError:  # the loop has closed: nobody waits for this any more
                pass

        thread = threading.Thread(target=target, name=f"skill:{self.skill}", daemon=True)
        thread.start()
        try:
            async with asyncio.timeout(limit_s):
                ok, value = await asyncio.shield(done)
        except TimeoutError:
            if thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SkillTimeout))
            raise
        if ok:
            return value
        if isinstance(value, SkillTimeout):
            raise TimeoutError
        if not isinstance(value, Exception):  # SystemExit and the like: the skill's failure, not the node's
            raise SkillFailed(f"skill {self.skill}: {what} raised {type(value).__name__}")
        raise value


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else "no message"
