"""Checks after the run, against what the node keeps: users' histories, the store's versions, power history.

- Histories (read through the API while the node still runs): every message the node accepted is
  in its user's history exactly once, no refused message is, sequence numbers only grow, and every
  reminder that fired is there.
- Single activation (read from QSS once the node has stopped): each activation writes an agent's
  state under a new lease epoch, so the epochs of its versions, in version order, never go back.
  Two live activations of one agent would interleave theirs (or be fenced off with errors).
- Power history (DuckDB, once the node has stopped and released it): the node's 1 s rows over the
  run, and each agent's energy over it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import duckdb
import httpx

from hero.bench.client import ANSWERED, REFUSED, MessageResult, history
from hero.bench.nodeproc import BenchUser
from hero.identity import NodeKeys
from hero.runtime.keys import state_key
from hero.store.qss import open_qss

SEED_PREFIX = "remember that my name is "


@dataclass
class HistoryAudit:
    users: int = 0
    missing: int = 0  # accepted messages not found in the history
    extra: int = 0  # messages in the history the client never had accepted (a kept refusal, a duplicate)
    seq_errors: int = 0
    reminders_in_history: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class EpochAudit:
    agents: int = 0
    versions: int = 0
    activations: int = 0  # distinct epochs that wrote state during the run
    interleaved: int = 0  # agents whose epochs went back in version order
    errors: list[str] = field(default_factory=list)


async def audit_histories(client: httpx.AsyncClient, url: str, users: list[BenchUser],
                          results: list[MessageResult], concurrency: int = 16) -> HistoryAudit:
    by_user: dict[int, list[MessageResult]] = {}
    for r in results:
        by_user.setdefault(r.user, []).append(r)
    audit = HistoryAudit()
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, user: BenchUser) -> None:
        async with gate:
            try:
                messages = await history(client, url, user.token)
            except httpx.HTTPError as exc:
                audit.errors.append(f"{user.name}: {type(exc).__name__}")
                return
        audit.users += 1
        seqs = [m["seq"] for m in messages]
        audit.seq_errors += sum(b <= a for a, b in pairwise(seqs))
        got = Counter(m["content"] for m in messages
                      if m["role"] == "user" and not str(m["content"]).startswith(SEED_PREFIX))
        mine = by_user.get(index, [])
        accepted = Counter(r.request_text for r in mine if r.status == ANSWERED or (r.http_status == 200))
        audit.missing += sum((accepted - got).values())
        audit.extra += sum((got - accepted).values())
        audit.reminders_in_history += sum(m.get("kind") == "reminder" for m in messages)
        refused_kept = {r.request_text for r in mine if r.status == REFUSED} - set(accepted)
        audit.extra += sum(got[text] for text in refused_kept)

    await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
    return audit


async def audit_epochs(data_dir: Path, agent_ids: list[str], since_unix: float) -> EpochAudit:
    """Open the stopped node's QSS with its keys and walk each agent's state versions."""
    audit = EpochAudit()
    store = await open_qss(data_dir, NodeKeys.load_or_create(data_dir))
    try:
        for agent_id in agent_ids:
            try:
                versions = await store.versions(state_key(agent_id))
            except Exception as exc:  # any store error is a finding, reported with the agent
                audit.errors.append(f"{agent_id[:12]}: {type(exc).__name__}: {exc}")
                continue
            audit.agents += 1
            audit.versions += len(versions)
            epochs = [v.epoch for v in sorted(versions, key=lambda v: v.version)]
            if any(b < a for a, b in pairwise(epochs)):
                audit.interleaved += 1
            audit.activations += len({v.epoch for v in versions if v.created >= since_unix})
    finally:
        await store.aclose()
    return audit


def read_power_history(path: Path, since: float, until: float, agent_ids: list[str]) -> dict[str, Any]:
    """The node's 1 s rows in [since, until] and each agent's joules over it. Blocking (run in a thread)."""
    if not path.is_file():
        return {"node": [], "agent_joules": {}, "error": f"{path} not found"}
    con = duckdb.connect(str(path), read_only=True)
    try:
        cols = ("ts", "watts", "idle_w", "agents_w", "runtime_w", "other_w", "budget_w", "utilisation")
        rows = con.execute(
            f"SELECT {', '.join(cols)} FROM node_power WHERE res = 1 AND ts >= ? AND ts <= ? ORDER BY ts",
            [since, until],
        ).fetchall()
        joules = dict(con.execute(
            "SELECT agent_id, sum(joules) FROM agent_power WHERE res = 1 AND ts >= ? AND ts <= ? GROUP BY agent_id",
            [since, until],
        ).fetchall())
    finally:
        con.close()
    wanted = set(agent_ids)
    return {
        "node": [dict(zip(cols, row, strict=True)) for row in rows],
        "agent_joules": {a: float(j) for a, j in joules.items() if a in wanted},
        "error": None,
    }


def backend_bytes(data_dir: Path) -> int:
    """Bytes under DATA/backends (fragments, packs, indexes, manifests). Blocking."""
    total = 0
    for path in (data_dir / "backends").rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total
