"""A durable timer fires once even when the write that removes it fails (issue 9 follow-up).

Real QSS on disk; the fault is four backends going away (16 of 20 left, below the
write quorum) right after the timer's turn has written the agent's state, so the
turn is done but the write that takes the timer out of `agent/<id>/timers` fails.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hero.runtime.events import Event, Reply, TimerFired
from hero.runtime.keys import timers_key
from hero.store.qss import QSS
from tests.conftest import history, make_node, new_agent
from tests.test_runtime_faults import FAST, Worker, chat, eventually

LOST = range(4)  # 16 of 20 backends left: below the write quorum of 17


def unplug(backends: Path) -> None:
    for n in LOST:
        (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")


def plug(backends: Path) -> None:
    for n in LOST:
        (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")


async def test_a_timer_whose_removal_write_fails_fires_once_and_its_removal_is_retried(store: QSS, tmp_path: Path):
    backends = tmp_path / "data" / "backends"
    restored = asyncio.Event()

    class FaultAfterTurn(Worker):
        """The timer's turn writes its entry, then the backends go: the removal that follows cannot be written."""

        async def handle(self, event: Event, reply: Reply) -> None:
            await super().handle(event, reply)
            if isinstance(event, TimerFired):
                unplug(backends)
                asyncio.get_running_loop().call_later(0.15, lambda: (plug(backends), restored.set()))

    node = make_node(store, FaultAfterTurn, idle_after_s=60, retries=FAST)
    agent = new_agent()
    await chat(node, agent, "timer 0.05 stretch")
    await eventually(lambda: restored.is_set())
    await eventually(lambda: len(node.timers) == 0)  # its removal, retried, was written
    assert json.loads(await store.get(timers_key(agent))) == []
    assert node.stats.turn_errors == 0 and node.stats.timers_fired == 1  # the turn itself had succeeded
    await node.aclose()

    again = make_node(store, Worker, idle_after_s=60, retries=FAST)
    await again.start()
    await asyncio.sleep(0.3)
    await again.settle()
    assert again.stats.timers_fired == 0
    assert [e.content for e in await history(again, agent) if e.kind == "reminder"] == ["timer stretch"]
    await again.aclose()


async def test_a_timer_whose_removal_is_never_stored_before_shutdown_does_not_fire_again_after_restart(
        store: QSS, tmp_path: Path):
    backends = tmp_path / "data" / "backends"

    class FaultAfterTurn(Worker):
        """The timer's turn writes its entry, then the backends go and stay gone until the node has stopped."""

        async def handle(self, event: Event, reply: Reply) -> None:
            await super().handle(event, reply)
            if isinstance(event, TimerFired):
                unplug(backends)

    node = make_node(store, FaultAfterTurn, idle_after_s=60, retries=FAST)
    agent = new_agent()
    await chat(node, agent, "timer 0.05 stretch")
    await eventually(lambda: node.stats.timers_fired == 1)
    assert len(node.timers) == 1  # kept as removed: its removal could not be written
    await node.aclose()
    plug(backends)
    assert len(json.loads(await store.get(timers_key(agent)))) == 1  # still stored as pending

    again = make_node(store, Worker, idle_after_s=60, retries=FAST)
    await again.start()
    await eventually(lambda: len(again.timers) == 0)  # found done in the agent's state: only its removal written
    await again.settle()
    assert [e.content for e in await history(again, agent) if e.kind == "reminder"] == ["timer stretch"]
    assert json.loads(await store.get(timers_key(agent))) == []
    assert again.stats.turn_errors == 0
    await again.aclose()
