"""What every `hero` sub-command shares: the one-line-error parser, the --data flag, the data dir's keys and users.

Its own module so that the parts' command modules (hero/skills/cli.py, ...) and hero/cli.py, which gathers
them, both import it instead of each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from hero.config import DEFAULT_DATA, load_config
from hero.errors import UsageError
from hero.identity import NodeKeys
from hero.users import Users


class Parser(argparse.ArgumentParser):
    """Every parse error is one line: `hero: [SUB-COMMAND: ]message` (main adds the `hero: `)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("hero").strip()
        choices = self._choices()
        if choices is not None and "required" in message:  # a bare `hero` or `hero user`
            kind = "action" if where else "command"
            message = f"missing {kind}: {', '.join(choices)} (see hero {where + ' ' if where else ''}--help)"
        raise UsageError(f"{where}: {message}" if where else message)

    def _choices(self) -> list[str] | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return list(action.choices)
        return None


def data_arg(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data directory (default ./hero-data)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")


def open_users(data_dir: Path) -> Users:
    return Users(data_dir, node_keys(data_dir))


def node_keys(data_dir: Path) -> NodeKeys:
    """The keys the data dir's node shares with its cluster (store, tokens): the cluster's if it has a key."""
    from hero.cluster.key import shared_keys

    return shared_keys(NodeKeys.load_or_create(data_dir), load_config(data_dir).cluster_key)
