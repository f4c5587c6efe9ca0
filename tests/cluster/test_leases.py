"""Leases that expire, and the cluster directory's rules (its table, its nodes, its hand-offs), without Ray."""

from __future__ import annotations

import pytest

from hero.errors import LeaseHeld, Unavailable
from hero.runtime.directory import LeaseTable
from hero.runtime.ray_directory import DirectoryService, epoch_of, rendezvous


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_owner_at_a_time_and_epochs_only_go_up() -> None:
    clock = Clock()
    table = LeaseTable(clock=clock)
    first = table.acquire("a", "node-1", floor=0, ttl_s=30).epoch
    with pytest.raises(LeaseHeld) as held:
        table.acquire("a", "node-2", floor=0, ttl_s=30)
    assert held.value.owner == "node-1"
    assert table.release("a", "node-1", first)
    second = table.acquire("a", "node-2", floor=0, ttl_s=30)
    assert second.epoch > first and not second.lapsed  # given back, not lapsed
    assert table.acquire("b", "node-1", floor=41, ttl_s=30).epoch == 42  # above what the store already holds


def test_a_lease_lapses_unless_renewed() -> None:
    clock = Clock()
    table = LeaseTable(clock=clock)
    epoch = table.acquire("a", "node-1", floor=0, ttl_s=30).epoch
    clock.t += 20
    assert table.renew("node-1", {"a": epoch}, ttl_s=30) == []
    clock.t += 20  # 40 s after the grant, 20 after the renewal: still held
    with pytest.raises(LeaseHeld):
        table.acquire("a", "node-2", floor=0, ttl_s=30)
    clock.t += 11  # 31 s without renewal: lapsed, and the next owner's epoch is higher
    taken = table.acquire("a", "node-2", floor=0, ttl_s=30)
    assert taken.epoch > epoch and taken.lapsed  # the old owner may still have a write in flight
    assert table.renew("node-1", {"a": epoch}, ttl_s=30) == ["a"]  # the old owner learns it lost it


def test_a_restarted_directory_learns_from_renewals_and_grants_above_every_old_epoch() -> None:
    old = LeaseTable()
    epoch = old.acquire("a", "node-1", floor=0, ttl_s=30).epoch
    new = LeaseTable(epoch_base=1 << 32)
    assert new.renew("node-1", {"a": epoch}, ttl_s=30) == []  # taken back at its epoch
    with pytest.raises(LeaseHeld):
        new.acquire("a", "node-2", floor=0, ttl_s=30)
    assert new.acquire("b", "node-2", floor=0, ttl_s=30).epoch > 1 << 32


def test_directory_refuses_strangers_and_new_grants_while_recovering() -> None:
    service = DirectoryService(generation=2, recovery_s=60)
    assert service.acquire("a", "node-1", 0, 30) == {"unknown_node": True}
    service.renew("node-1", {"url": "http://n1"}, {"b": 7}, [], 30)
    answer = service.acquire("a", "node-1", 0, 30)
    assert "recovering_s" in answer
    with pytest.raises(Unavailable, match="restarting"):
        epoch_of(answer, "a")
    assert service.owner("b")["node_id"] == "node-1"  # renewed during recovery: kept


def test_a_silent_node_loses_its_leases_and_its_timers_go_to_a_live_node() -> None:
    service = DirectoryService()
    service.renew("node-1", {"url": "http://n1"}, {}, [], 0.2)
    service.renew("node-2", {"url": "http://n2"}, {}, [], 30)
    epoch = epoch_of(service.acquire("a", "node-1", 0, 0.2, True), "a")
    assert epoch_of(service.acquire("c", "node-1", 0, 0.2), "c") > 0
    with pytest.raises(LeaseHeld) as held:
        epoch_of(service.acquire("a", "node-2", 0, 30), "a")
    assert held.value.owner == "node-1"
    import time

    time.sleep(0.25)
    reply = service.renew("node-2", {"url": "http://n2"}, {}, [], 30)
    assert [n["node_id"] for n in reply["nodes"]] == ["node-2"]
    assert sorted(reply["adopt"]) == ["a", "c"]  # a live node takes over whatever timers they have
    assert epoch_of(service.acquire("a", "node-2", epoch, 30, True), "a") > epoch
    assert service.renew("node-2", {}, {"a": epoch + 1}, ["a"], 30)["adopt"] == ["c"]


def test_leaving_hands_timers_over_and_nonces_work_once() -> None:
    service = DirectoryService()
    service.renew("node-1", {}, {}, [], 30)
    service.renew("node-2", {}, {}, [], 30)
    epoch = epoch_of(service.acquire("a", "node-1", 0, 30), "a")
    service.renew("node-1", {}, {"a": epoch}, ["a"], 30)
    assert service.leave("node-1") == 1
    assert service.renew("node-2", {}, {}, [], 30)["adopt"] == ["a"]
    assert service.spend_nonce("n1", 2e9) and not service.spend_nonce("n1", 2e9)


def test_rendezvous_is_stable_when_other_nodes_come_and_go() -> None:
    nodes = [f"node-{i}" for i in range(5)]
    picks = {a: rendezvous(a, nodes) for a in map(str, range(200))}
    assert len(set(picks.values())) == 5
    fewer = [n for n in nodes if n != "node-0"]
    assert all(rendezvous(a, fewer) == p for a, p in picks.items() if p != "node-0")
