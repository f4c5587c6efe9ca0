"""The power seams: what each turn costs (runtime → power), may this work start (runtime → power), and what the
web shows of the node's power (web → power).

The runtime reports what each turn cost; power turns that into joules and
watts and answers admission questions. The web reads reports (JSON), a
snapshot for Prometheus and the stored history; it never builds power's parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, get_args

T = TypeVar("T")

ChartWindow = Literal["1h", "1d"]  # the spans a power chart covers
CHART_WINDOWS: tuple[str, ...] = get_args(ChartWindow)


class Metering(Protocol):
    def run_turn(self, agent_id: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        """Wrap an agent's turn so the CPU time of every step (between awaits) is charged to `agent_id`."""
        ...

    def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
        """Charge inference CPU time, measured in the inference thread, to the agent that asked. Thread-safe."""
        ...

    def charge_storage(self, agent_id: str, nbytes: int) -> None:
        """Charge bytes written to or read from the store for this agent."""
        ...

    def charge_cpu(self, agent_id: str, cpu_ns: int, part: Literal["loop", "skills"] = "loop") -> None:
        """Charge CPU time measured elsewhere: on the loop thread, or ("skills") a skill call's thread CPU time,
        from the skill's worker thread (thread-safe); the ledger shows it as the agent's skill CPU."""
        ...


class Admission(Protocol):
    def admit(self, agent_id: str, *, interactive: bool) -> None:
        """Return if work may start now; raise `Overloaded` (with retry_after) if it must wait.

        Interactive work (a user's chat) is admitted first; background work
        (timers marked non-interactive, API calls flagged background) is deferred.
        """
        ...


@dataclass(frozen=True)
class AgentEnergy:
    """One agent's figures for a scrape: watts over the power window, energy and CPU since the node started."""

    agent_id: str
    watts: float
    joules: float
    cpu_seconds: float


@dataclass(frozen=True)
class PowerSnapshot:
    """What `/metrics` exposes of the node's power, read at once. Watts are means over the power window."""

    source: str  # "rapl" | "model"
    node_watts: float
    idle_watts: float  # the profile's idle power (never attributed to agents)
    budget_watts: float
    headroom_watts: float  # budget minus the governor's average
    runtime_watts: float
    other_watts: float
    utilisation: float
    node_joules: float
    conservation_error: float  # of the last tick's split
    conservation_violations: int
    loop_wait_ratio: float
    agents: Sequence[AgentEnergy]
    agents_by_status: Mapping[str, int]
    governor_level: str  # "normal" | "busy" | "constrained"
    deferred: Mapping[str, int]  # work refused with 429, by reason


class PowerSnapshots(Protocol):
    """The narrow seam a Prometheus collector reads at scrape time."""

    def snapshot(self) -> PowerSnapshot:
        """The figures `/metrics` exposes, read at once."""
        ...


class PowerReports(PowerSnapshots, Protocol):
    """What the web reads of the power part (`hero.power.service.PowerService`)."""

    def node_report(self) -> dict[str, Any]:
        """The node's power split (JSON), every watts figure a mean over the same window."""
        ...

    def agent_report(self, agent_id: str) -> dict[str, Any]:
        """One agent's power figures (JSON), and the node's average agent: all its user may see."""
        ...

    def stream(self) -> AsyncIterator[dict[str, Any]]:
        """`node_report()` after every tick until the service closes."""
        ...

    async def history_rows(self, since: float, *, top: int) -> dict[str, Any]:
        """Stored node rows since `since` (unix) and the `top` agents by energy. Raises Unavailable without history."""
        ...

    async def forget(self, agent_id: str) -> None:
        """The agent was deleted: no report, scrape or chart names it from now on (its stored rows go too)."""
        ...

    async def chart(self, window: ChartWindow) -> dict[str, Any]:
        """Node watts and the top agents over `window`, one point per bucket. Raises Unavailable without history."""
        ...
