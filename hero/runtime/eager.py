"""An agent's task: its turns run in it, and each turn's first step runs at once (eagerly).

An activated agent has one task, parked on a future between events at no cost.
A new turn does not wait for the loop to schedule that task: its first step
runs right away, in `start`, but *as* the agent's task, as Python 3.12's eager
tasks do. So `asyncio.current_task()`, `asyncio.timeout()`, TaskGroups and
context variables in that step belong to the turn, never to the HTTP handler
or timer task that delivered the event. A turn that never waits (a no-op, a
skill answering from memory) costs no task switch at all; one that waits is
handed to the agent's task, which drives it on from where it stopped. Every
step of every turn of the agent runs in the agent's own context.

The swap of the loop's current task uses asyncio's `_enter_task` and
`_leave_task`, the two calls every asyncio task makes around each of its steps.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio.tasks import _enter_task, _leave_task
from asyncio.tasks import current_task as _current_task
from collections.abc import Coroutine, Generator
from typing import Any

from hero.nursery import Nursery


class AgentTasks:
    """The tasks of every agent in memory, and how many turns they are running (`join` waits for none)."""

    def __init__(self) -> None:
        self.nursery = Nursery("agents")
        self.running = 0
        self._quiet: asyncio.Future[None] | None = None

    def new(self, name: str) -> AgentTask:
        return AgentTask(self, name=name)

    def finished(self) -> None:
        self.running -= 1
        if not self.running and self._quiet is not None:
            if not self._quiet.done():
                self._quiet.set_result(None)
            self._quiet = None

    async def join(self) -> None:
        while self.running:
            self._quiet = asyncio.get_running_loop().create_future()
            await self._quiet

    async def aclose(self) -> None:
        """Cancel every agent's task: a waiting turn gets the cancellation where it waits."""
        await self.nursery.aclose()


class AgentTask:
    """The one task of an activated agent. `start` a turn; `close` it when the agent leaves memory."""

    def __init__(self, group: AgentTasks, *, name: str) -> None:
        self._group = group
        self._nursery = nursery = group.nursery
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.Context()  # the agent's own: nothing leaks in from callers or out to them
        self._handoff: tuple[Coroutine[Any, Any, Any], Any] | None = None
        self._closing = False
        self._wake: asyncio.Future[None] = self._loop.create_future()
        self._task = nursery.spawn(self._run(), name=name)

    def start(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Run `coro`'s first step now, as this agent's task. True if it finished; else the task drives the rest.

        An exception raised in the first step reaches the caller, as from a plain call.
        """
        if self._handoff is not None or self._closing:
            coro.close()
            raise RuntimeError(f"{self._name}: a turn is already running or the task is closed")
        if self._task.done():  # cancelled while parked (a stray cancel): the agent gets a fresh task
            self._wake = self._loop.create_future()
            self._task = self._nursery.spawn(self._run(), name=self._name)
        loop, task = self._loop, self._task
        caller = _current_task(loop)
        if caller is not None:
            _leave_task(loop, caller)
        _enter_task(loop, task)
        self._group.running += 1
        try:
            waiting_on = self._context.run(coro.send, None)
        except StopIteration:
            self._group.finished()
            return True
        except BaseException:  # raised in its first step: the caller gets it
            self._group.finished()
            raise
        finally:
            _leave_task(loop, task)
            if caller is not None:
                _enter_task(loop, caller)
        self._handoff = (coro, waiting_on)
        if not self._wake.done():
            self._wake.set_result(None)
        return False

    def close(self) -> None:
        """The agent leaves memory: its task ends (at once if parked, else after the running turn)."""
        self._closing = True
        if not self._wake.done():
            self._wake.set_result(None)

    async def _run(self) -> None:
        while True:
            pending: BaseException | None = None
            try:
                await self._wake
            except asyncio.CancelledError as exc:
                if self._handoff is None:
                    raise  # nothing to finish: the task ends
                pending = exc  # cancelled between a turn's first step and now: the turn gets it
            handoff, self._handoff = self._handoff, None
            self._wake = self._loop.create_future()
            if handoff is not None:
                try:
                    await _Drive(handoff[0], handoff[1], self._context, pending)
                finally:
                    self._group.finished()
            elif self._closing:
                return


class _Drive:
    """Drives a started coroutine from the future it waits on, in its agent's context, relaying results."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        waiting_on: Any,
        context: contextvars.Context,
        pending: BaseException | None,
    ) -> None:
        self._coro = coro
        self._waiting_on = waiting_on
        self._context = context
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, None]:
        coro, run = self._coro, self._context.run
        waiting_on, pending = self._waiting_on, self._pending
        while True:
            if pending is None:
                try:
                    sent = yield waiting_on
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # cancellation or a future's error: deliver it where the turn waits
                    pending = exc
            try:
                if pending is not None:
                    error, pending = pending, None
                    waiting_on = run(coro.throw, error)
                else:
                    waiting_on = run(coro.send, sent)
            except StopIteration:
                return
