"""Where an agent's objects live in the store: `agent/<id>/<name>`, one prefix per agent.

The one place that writes or parses these keys; the runtime, the CLI and tools
that list agents all use it. `state` is the agent's data, `timers` its durable
timers; other parts of an agent's data take other names under the same prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "agent/"
STATE = "state"
TIMERS = "timers"


@dataclass(frozen=True)
class AgentKey:
    agent_id: str
    name: str  # "state", "timers", …


def agent_key(agent_id: str, name: str) -> str:
    return f"{PREFIX}{agent_id}/{name}"


def state_key(agent_id: str) -> str:
    return agent_key(agent_id, STATE)


def timers_key(agent_id: str) -> str:
    return agent_key(agent_id, TIMERS)


def parse_key(key: str) -> AgentKey | None:
    """The agent and object a store key names; None for a key that is not an agent's."""
    if not key.startswith(PREFIX):
        return None
    agent_id, slash, name = key[len(PREFIX) :].partition("/")
    if not agent_id or not slash or not name:
        return None
    return AgentKey(agent_id, name)
