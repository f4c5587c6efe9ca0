"""Old versions of an agent's timers object are pruned like its head's (issue 11, part 3).

Real QSS on disk. `agent/<id>/timers` is written on every timer set, fire and
cancel; under the default `keep_versions = 0` its versions piled up for ever.
"""

from __future__ import annotations

import json

from hero.runtime.keys import timers_key
from hero.runtime.pruning import HEAD_VERSIONS, PRUNE_SLACK
from hero.store.qss import QSS
from tests.conftest import history, make_node, new_agent
from tests.test_runtime_faults import FAST, Worker, chat, eventually

CYCLES = 40  # timers set and fired: 80 writes of the timers object, more than twice the bound


async def test_old_timers_versions_are_pruned_while_other_objects_keep_theirs(store: QSS):
    node = make_node(store, Worker, idle_after_s=3600, retries=FAST)
    agent = new_agent()
    for v in range(5):
        await store.put("node/other", b"v%d" % v, epoch=1)
    for i in range(CYCLES):
        await chat(node, agent, f"timer 0.01 t{i}")
        await eventually(lambda fired=i + 1: node.stats.timers_fired == fired and len(node.timers) == 0)
    await chat(node, agent, "timer 1.0 pending")
    await node.settle()
    written = 2 * CYCLES + 1
    kept = await store.versions(timers_key(agent))
    assert kept[-1].version == written
    assert len(kept) <= 2 * HEAD_VERSIONS + PRUNE_SLACK  # not the 81 written
    assert [t["name"] for t in json.loads(await store.get(timers_key(agent)))] == ["pending"]
    assert len(await store.versions("node/other")) == 5
    await node.aclose()
    assert node.stats.timers_fired == CYCLES  # the pending one is still pending

    again = make_node(store, Worker, idle_after_s=3600, retries=FAST)
    await again.start()
    await eventually(lambda: again.stats.timers_fired == 1)
    await again.settle()
    reminders = [e.content for e in await history(again, agent) if e.kind == "reminder"]
    assert reminders == [f"timer t{i}" for i in range(CYCLES)] + ["timer pending"]
    assert json.loads(await store.get(timers_key(agent))) == []
    await again.aclose()
