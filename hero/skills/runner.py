"""Skill calls run off the node's event loop, so skill code (async or plain) can never stall it.

Each call runs in a worker thread with an event loop of its own, one call per
worker at a time; idle workers are kept for the next call (a hand-off costs tens
of microseconds, a new thread and loop several hundred). The calling turn waits
on a future. At the call's time limit its task is cancelled (a skill waiting on
I/O or a timer stops there); one that does not stop within `grace_s` (it spins,
or it is a plain function) has `SkillTimeout` raised in its thread at its next
Python instruction and its worker is retired, never reused: its loop may be
mid-step. A thread that still runs after that (code catching `BaseException`, a
long C call) is abandoned and logged; it cannot hold the loop, only share the
GIL. The worker's thread CPU time is each call's cost, charged to its agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("hero.skills")
CHECK_STOPPED_S = 5.0  # after an interrupt: when the operator is told a thread could not be stopped


class SkillTimeout(BaseException):
    """Raised inside a worker thread whose call ran past its time limit and did not stop when cancelled."""


Outcome = tuple[bool, Any]  # (True, result) or (False, the exception raised)
EXPIRED: Outcome = (False, TimeoutError())  # what the call's future holds when its time limit passed first


class _Job:
    def __init__(self, fn: Callable[[], Any], home: asyncio.AbstractEventLoop, charge: Callable[[int], None] | None,
                 name: str) -> None:
        self.fn = fn  # no arguments: returns the result, or a coroutine to run to its result
        self.home = home
        self.done: asyncio.Future[Outcome] = home.create_future()
        self.ended: asyncio.Future[None] | None = None  # after the limit: when the worker is done with it
        self.settled = False
        self.charge = charge
        self.name = name
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cancelled = False

    def run(self, loop: asyncio.AbstractEventLoop, spawned: list[asyncio.Task[Any]]) -> None:
        """On the worker thread: run the call, charge its CPU time, hand the outcome to the waiting turn."""
        started = time.thread_time_ns()
        outcome: Outcome
        try:
            result = self.fn()
            if inspect.iscoroutine(result):
                self.loop = loop
                self.task = loop.create_task(result, name=self.name)
                if self.cancelled:  # the turn gave up before the task existed
                    self.task.cancel()
                result = loop.run_until_complete(self.task)
            outcome = (True, result)
        except BaseException as exc:  # handed to the awaiting turn, which decides what it means
            outcome = (False, exc)
        finally:
            try:
                _cancel_leftovers(loop, spawned)
            except Exception:  # a leftover that will not end: the call's outcome still goes back
                log.exception("%s: tasks it left behind could not be cancelled", self.name)
            if self.charge is not None:
                self.charge(time.thread_time_ns() - started)
        with contextlib.suppress(RuntimeError):  # the node's loop has closed: nobody waits for this any more
            self.home.call_soon_threadsafe(self._settle, outcome)

    def _settle(self, outcome: Outcome) -> None:
        self.settled = True
        if not self.done.done():
            self.done.set_result(outcome)
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def expire(self) -> None:
        """On the node's loop, at the time limit."""
        if not self.done.done():
            self.done.set_result(EXPIRED)

    def cancel(self) -> None:
        """From the node's loop: ask the call's task to stop (it does at its next await)."""
        self.cancelled = True
        task, loop = self.task, self.loop
        if task is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the worker's loop is gone: the call has ended
                loop.call_soon_threadsafe(task.cancel)


class _Worker:
    def __init__(self, runner: SkillRunner) -> None:
        self.runner = runner
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.retired = False
        self._current: _Job | None = None
        self._lock = threading.Lock()  # `_current` and `retired`: an interrupt hits only the call it is meant for
        self.thread = threading.Thread(target=self._main, name="hero-skill", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        spawned: list[asyncio.Task[Any]] = []  # the tasks a call creates (all_tasks() would scan every loop's)

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            spawned.append(task)
            return task

        loop.set_task_factory(factory)
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                with self._lock:
                    self._current = job
                job.run(loop, spawned)
                with self._lock:
                    self._current = None
                    if self.retired:
                        return
                if not self.runner.give_back(self):
                    return
        except BaseException:  # a `SkillTimeout` that landed after its call ended: the retired worker ends
            return
        finally:
            with contextlib.suppress(BaseException):  # an interrupted loop may refuse to close; it goes with the thread
                loop.close()

    def interrupt(self, job: _Job) -> bool:
        """Raise `SkillTimeout` in the worker's thread if it still runs `job`, and retire the worker."""
        with self._lock:
            if self._current is not job or self.thread.ident is None:
                return False
            self.retired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident),
                                                       ctypes.py_object(SkillTimeout))
            return True


class SkillRunner:
    """The node's skill workers: a call waits only for its own worker; idle workers wait on a queue (no polling)."""

    def __init__(self, *, keep_idle: int = 8, grace_s: float = 0.2) -> None:
        self.keep_idle = keep_idle
        self.grace_s = grace_s
        self.calls = 0
        self.interrupted = 0  # calls stopped by an exception raised in their thread
        self.abandoned = 0  # threads still running after that
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._retired: list[_Worker] = []  # interrupted workers, until their threads end
        self._closed = False

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker(self)

    def give_back(self, worker: _Worker) -> bool:
        """From a worker's thread after a call: keep it for the next call (True) or let it end."""
        with self._lock:
            if self._closed or len(self._idle) >= self.keep_idle:
                return False
            self._idle.append(worker)
            return True

    async def run(self, fn: Callable[[], Any], *, limit_s: float, name: str = "skill",
                  charge: Callable[[int], None] | None = None) -> Outcome:
        """Run `fn()` (and the coroutine it returns, if any) in a worker; `TimeoutError` past `limit_s`.

        `charge` gets the call's thread CPU time in nanoseconds, from the worker's thread.
        """
        home = asyncio.get_running_loop()
        job = _Job(fn, home, charge, name)
        worker = self._take()
        worker.jobs.put(job)
        self.calls += 1
        limit = home.call_later(limit_s, job.expire)
        try:
            outcome = await job.done
        except asyncio.CancelledError:  # the turn itself was cancelled (shutdown): the call stops with it
            job.cancel()
            raise
        finally:
            limit.cancel()
        if outcome is EXPIRED:
            await self._stop(worker, job)
            raise TimeoutError
        return outcome

    async def _stop(self, worker: _Worker, job: _Job) -> None:
        """Cancel the call; interrupt its thread if it has not ended within `grace_s`."""
        job.cancel()
        if not job.settled:
            job.ended = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.ended, self.grace_s)
                return
        if job.settled or not worker.interrupt(job):
            return
        self.interrupted += 1
        self._retired = [w for w in self._retired if w.thread.is_alive()] + [worker]
        asyncio.get_running_loop().call_later(CHECK_STOPPED_S, self._check_stopped, worker, job.name)

    def _check_stopped(self, worker: _Worker, name: str) -> None:
        if worker.thread.is_alive():
            self.abandoned += 1
            log.error("%s: its thread did not stop when interrupted; it is abandoned (%d so far)", name,
                      self.abandoned)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def stopping(self) -> int:
        """Interrupted calls whose threads still run."""
        return sum(w.thread.is_alive() for w in self._retired)

    def close(self) -> None:
        """Let idle workers end; busy ones end after their call."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.jobs.put(None)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, spawned: list[asyncio.Task[Any]]) -> None:
    """Tasks a call started and left behind are cancelled with it (as `asyncio.run` does)."""
    leftovers = [task for task in spawned if not task.done()]
    spawned.clear()
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
