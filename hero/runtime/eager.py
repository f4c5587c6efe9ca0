"""Run a coroutine at once, in the caller's step; give it a task only if it has to wait.

A no-op or skill-only turn finishes without ever suspending, so it should not
pay for a Task (creation, scheduling, done callbacks): that is most of the
cost of a small event. This is Python 3.12's eager task factory, by hand,
for 3.11: the first step runs now; if the coroutine suspends, a task takes
over driving it exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from hero.nursery import Nursery


def start_eager(coro: Coroutine[Any, Any, Any], nursery: Nursery, *, name: str) -> bool:
    """Step `coro` now. Returns True if it finished; else a task in `nursery` now owns the rest of it."""
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return True
    nursery.spawn(_Resume(coro, waiting_on).run(), name=name)
    return False


class _Resume:
    """Hands a started coroutine's pending future to the task driving it, and relays results back."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    async def run(self) -> Any:
        return await self

    def __await__(self) -> Generator[Any, Any, Any]:
        waiting_on = self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # cancellation or a future's error: deliver it where the coroutine waits
                try:
                    waiting_on = self._coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                waiting_on = self._coro.send(sent)
            except StopIteration as done:
                return done.value
