"""`hero user delete NAME --purge`: a user and every trace of their agent, deleted on a node that is not running.

A running node holds the agent in memory and its timers on its schedule, so the deletion goes through it
(`DELETE /api/me`); here the data dir's lock says no node runs, and the store is purged directly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hero.clibase import open_users
from hero.errors import UsageError
from hero.nodelock import NodeLock
from hero.users import Registry
from hero.users_data import purge_agent

POWER_HISTORY = "power.duckdb"


def add_delete_parser(user: Any, data_arg: Any) -> None:
    """`hero user delete` under `hero user` (`user`: its sub-parsers; `data_arg` adds --data and --json)."""
    delete = user.add_parser("delete", help="delete a user, their agent and every object of it from every backend "
                             "(on a stopped node; a running one deletes through DELETE /api/me)")
    delete.add_argument("name")
    delete.add_argument("--purge", action="store_true",
                        help="required: say that every object of the agent goes for good")
    data_arg(delete, json_flag=True)
    delete.set_defaults(func=cmd_user_delete)


def cmd_user_delete(args: argparse.Namespace) -> int:
    if not args.purge:
        raise UsageError(f"deleting {args.name!r} deletes their agent and all its data for good: add --purge")
    data = Path(args.data)
    if not (data / "keys").exists():
        raise UsageError(f"{data} is not a node's data dir (no keys)")
    try:
        lock = NodeLock.acquire(data, port=0)
    except UsageError as exc:
        raise UsageError(f"{exc.message}; a running node deletes through its API (DELETE /api/me), "
                         "or stop it first") from None
    with lock, open_users(data) as users:
        agent_id = users.get(args.name).agent_id

        async def delete(registry: Registry) -> dict[str, Any]:
            await registry.revoke_agent(agent_id)
            purged = await purge_agent(registry.store, agent_id)
            await registry.delete_user(agent_id)
            return purged

        purged = users.call(delete)
    forget_power(data, agent_id)
    out = {"deleted": args.name, "agent_id": agent_id, "store": purged}
    where = ("from every backend" if not purged["pending"] else
             "from every backend that answered; the rest go from the others when they answer (the node does it: "
             "see `hero storage status`)")
    print(json.dumps(out) if args.json else
          f"deleted {args.name}: their tokens no longer work; {purged['objects']} objects of agent "
          f"{agent_id[:16]}… removed {where} ({purged['fragments_removed']} fragments)")
    return 0


def forget_power(data: Path, agent_id: str) -> None:
    """The agent's rows in the node's power history go too (its dashboard charts)."""
    path = data / POWER_HISTORY
    if not path.exists():
        return
    from hero.power.history import PowerHistory

    history = PowerHistory(path, budget_w=0.0)
    try:
        history.forget(agent_id)
    finally:
        history.close()
