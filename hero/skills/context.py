"""What a skill sees during a call (`SkillContext`), and how every call is run: off the node's event loop (in a
skill worker, `runner.py`), within its permissions, its time limit and its storage quota, its failures contained,
its CPU time charged to the agent as skill CPU.

A skill's state is its own slot of the agent's state (`state["skills"][name]`),
persisted with the agent (hibernation, QSS); it never sees another skill's slot
or another agent's state. A call works on a copy of the slot, which replaces the
slot when the call succeeds within the quota. What a skill asks of the node
(timers, the model, other agents, the network) runs on the node's loop, awaited
from the worker. Anything outside the manifest's permissions raises
`PermissionDenied` naming the skill and what it asked for.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from hero.errors import HeroError, PermissionDenied, SkillFailed
from hero.runtime.agent import AgentContext
from hero.runtime.events import OverlayMessage
from hero.seams.power import Metering
from hero.skills.manifest import AGENT, Manifest
from hero.skills.runner import SkillRunner

T = TypeVar("T")

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
    runner: SkillRunner = field(default_factory=SkillRunner)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchResult:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


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
        self._home: asyncio.AbstractEventLoop | None = None  # the node's loop, during a call

    def _deny(self, what: str, grant: str) -> PermissionDenied:
        return PermissionDenied(f"skill {self.skill} may not {what}: its manifest does not grant {grant}")

    # timers

    async def set_timer(self, delay_s: float, payload: dict[str, Any] | None = None) -> str:
        """A durable timer: in `delay_s` seconds the skill's on_timer handler gets `payload`, even after a restart."""
        if not self.permissions.timers:
            raise self._deny("set timers", "timers")
        timer = await self._at_home(self._agent.set_timer(delay_s, timer_name(self.skill), payload or {},
                                                          interactive=self.interactive))
        return timer.timer_id

    async def cancel_timer(self, timer_id: str) -> None:
        if not self.permissions.timers:
            raise self._deny("cancel timers", "timers")
        await self._at_home(self._agent.cancel_timer(timer_id))

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
        return await self._at_home(self._complete(messages, options))

    async def _complete(self, messages: list[dict[str, str]], options: dict[str, Any]) -> str:
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
            return await self._at_home(self._agent.send(agent_id, text, topic=topic, wait_s=wait_s))
        return await self._at_home(self._agent.send(node, text, agent=agent_id, topic=topic, wait_s=wait_s))

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
        if self._services.http is None:
            raise PermissionDenied(f"skill {self.skill}: this node gives skills no network")
        return await self._at_home(self._fetch(url, method, json_body, headers, timeout_s))

    async def _fetch(self, url: str, method: str, json_body: Any, headers: Mapping[str, str] | None,
                     timeout_s: float) -> FetchResult:
        client = self._services.http
        assert client is not None
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
        if power is None:
            return None
        home = self._home
        if home is None or _on_loop(home):
            return power.agent_report(self.agent_id)
        return asyncio.run_coroutine_threadsafe(_report(power, self.agent_id), home).result(timeout=10)

    def service(self, name: str) -> Any:
        return self._services.extra.get(name)

    # running a call

    async def call(self, fn: Callable[..., Any], *args: Any, what: str) -> Any:
        """Run one of the skill's functions as `fn(self, *args)` in a skill worker, never on the node's loop:
        within the time limit, on a copy of its state that replaces the slot only if the call succeeds within
        the quota, its failure a `SkillFailed` (logged) and never the agent's, its thread CPU charged to the agent."""
        limit_s = self.permissions.time_limit_s
        slot_now = self.state
        started = time.perf_counter()
        own = copy.copy(self)  # the call's own context: a call that is abandoned keeps only its copy of the state
        own._home = asyncio.get_running_loop()

        def body() -> Any:  # on the worker: the state is copied there, so its cost is the skill's
            own.state = json.loads(json.dumps(slot_now))
            result = fn(own, *args)
            if inspect.iscoroutine(result):
                return _sized(result, own)
            return result, own.state, len(json.dumps(own.state))

        try:
            ok, value = await self._services.runner.run(body, limit_s=limit_s, name=f"skill {self.skill}: {what}",
                                                        charge=self._charge)
        except TimeoutError:
            log.warning("agent %s: skill %s: %s ran past its time limit of %g s", self.agent_id[:12], self.skill,
                        what, limit_s)
            raise SkillFailed(f"skill {self.skill}: {what} ran past its time limit of {limit_s:g} s") from None
        if not ok:
            raise self._failure(value, what)
        result, state, size = value
        if size > self.permissions.storage_bytes and state:  # an empty slot costs nothing
            raise PermissionDenied(f"skill {self.skill}: its state would be {size} bytes, over its storage quota "
                                   f"of {self.permissions.storage_kb} KB; the change was undone")
        slot_now.clear()
        slot_now.update(state)
        log.debug("skill %s: %s took %.1f ms", self.skill, what, (time.perf_counter() - started) * 1e3)
        return result

    def _failure(self, exc: BaseException, what: str) -> HeroError:
        """What a call that raised means to the agent: its own error, or `SkillFailed` (logged for the operator)."""
        if isinstance(exc, HeroError):
            return exc
        if isinstance(exc, TimeoutError | asyncio.CancelledError):
            log.warning("agent %s: skill %s: %s %s", self.agent_id[:12], self.skill, what,
                        "timed out" if isinstance(exc, TimeoutError) else "was cancelled")
            return SkillFailed(f"skill {self.skill}: {what} timed out")
        if not isinstance(exc, Exception):  # SystemExit and the like: the skill's failure, not the node's
            log.error("agent %s: skill %s: %s raised %s", self.agent_id[:12], self.skill, what, type(exc).__name__)
            return SkillFailed(f"skill {self.skill}: {what} raised {type(exc).__name__}")
        log.error("agent %s: skill %s: %s raised", self.agent_id[:12], self.skill, what, exc_info=exc)
        return SkillFailed(f"skill {self.skill}: {what} failed ({type(exc).__name__}: {_short(exc)})")

    def _charge(self, cpu_ns: int) -> None:
        """From the worker's thread: the call's CPU time, the agent's skill CPU in its power ledger."""
        metering = self._services.metering
        if metering is not None:
            metering.charge_cpu(self.agent_id, cpu_ns, part="skills")

    async def _at_home(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the node's loop (the runtime, the model and the overlay live there) and await it from
        the skill's worker; cancelling the skill's task cancels it too."""
        home = self._home
        if home is None or _on_loop(home):
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, home))


async def _sized(coro: Coroutine[Any, Any, Any], ctx: SkillContext) -> tuple[Any, dict[str, Any], int]:
    result = await coro
    return result, ctx.state, len(json.dumps(ctx.state))


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # a plain function in its worker: no loop runs here
        return False


async def _report(power: AgentPower, agent_id: str) -> dict[str, Any]:
    return power.agent_report(agent_id)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else "no message"
