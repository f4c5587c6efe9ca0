"""Eager start: a coroutine that never waits needs no task; one that waits is resumed where it stopped."""

from __future__ import annotations

import asyncio

import pytest

from hero.nursery import Nursery
from hero.runtime.eager import start_eager


async def test_coroutine_that_never_waits_finishes_without_a_task():
    nursery = Nursery("t")
    done = []

    async def quick():
        done.append(asyncio.current_task())

    assert start_eager(quick(), nursery, name="q") is True
    assert len(done) == 1 and len(nursery) == 0
    await nursery.aclose()


async def test_waiting_coroutine_is_resumed_by_a_task_with_values_and_errors():
    nursery = Nursery("t")
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    bad: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def slow():
        seen.append(await fut)
        await asyncio.sleep(0)
        try:
            await bad
        except ValueError as exc:
            seen.append(str(exc))

    assert start_eager(slow(), nursery, name="s") is False
    assert seen == [] and len(nursery) == 1
    fut.set_result(7)
    await asyncio.sleep(0.01)
    bad.set_exception(ValueError("boom"))
    await nursery.join()
    assert seen == [7, "boom"]


async def test_cancelling_the_task_reaches_the_waiting_coroutine():
    nursery = Nursery("t")
    cleaned = []

    async def forever():
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    start_eager(forever(), nursery, name="f")
    await asyncio.sleep(0)
    await nursery.aclose()
    assert cleaned == [True]


async def test_an_error_in_the_first_step_reaches_the_caller():
    async def broken():
        raise KeyError("first step")

    with pytest.raises(KeyError):
        start_eager(broken(), Nursery("t"), name="b")
