"""PowerService: the node's meter, ledger, governor and history behind the power seams (`hero.seams.power`).

The runtime calls `run_turn`, `charge_llm`, `charge_storage`, `charge_cpu` and `admit`
(Metering, Admission); the web calls `node_report`, `agent_report`, `stream`,
`snapshot`, `history` and `chart` (PowerReports). Everything periodic happens in
one 1 Hz tick task owned by this service. The reports' shapes are
`hero.power.reports`; the settings `hero.power.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

from hero.errors import Unavailable
from hero.power.account import utc_day
from hero.power.backstop import CpuMaxBackstop
from hero.power.charts import power_history
from hero.power.config import PowerConfig
from hero.power.governor import Governor
from hero.power.history import PowerHistory
from hero.power.ledger import Ledger, TickReport
from hero.power.meter import NodeMeter
from hero.power.parts import PartSampler
from hero.power.profiles import HardwareProfile, load_profile
from hero.power.reports import Reports
from hero.power.window import PowerWindow
from hero.seams.llm import GovernedLLM
from hero.seams.node import GovernedNode
from hero.seams.power import ChartWindow, PowerSnapshot

log = logging.getLogger("hero.power")
T = TypeVar("T")


class PowerService:
    """Meter + ledger + governor + history for one node.

    Lifecycle: construct → `attach(node, llm)` → `await start()` → … →
    `await aclose()`. `attach` may come before or after `start`.
    """

    def __init__(
        self,
        profile: HardwareProfile | str | None,
        data_dir: Path | str,
        config: PowerConfig | None = None,
    ) -> None:
        self.profile = profile if isinstance(profile, HardwareProfile) else load_profile(profile)
        self.config = cfg = config or PowerConfig()
        self.data_dir = Path(data_dir)
        self.meter = NodeMeter(
            self.profile,
            powercap_root=cfg.powercap_root,
            proc_stat=cfg.proc_stat,
            host_speed=cfg.host_speed,
            use_rapl=cfg.use_rapl,
        )
        self.ledger = Ledger(self.profile.idle_w, clock=cfg.clock)
        backstop = CpuMaxBackstop(cfg.cgroup_fs, cfg.proc_self_cgroup) if cfg.cgroup_backstop else None
        self.governor = Governor(
            self.profile,
            cfg.governor,
            u_per_cpu=self.meter.utilisation_per_host_cpu(),
            joules_today=self.ledger.joules_today,
            demand=self.ledger.demand,
            backstop=backstop,
        )
        self.window = PowerWindow(cfg.governor.window_s)  # what every report's watts are averaged over
        self.history = (
            PowerHistory(self.data_dir / "power.duckdb", budget_w=self.profile.budget_w, retention=cfg.retention)
            if cfg.history
            else None
        )
        self.parts = PartSampler(cfg.cpu_parts_hz) if cfg.cpu_parts_hz > 0 else None
        self.reports = Reports(self.profile, self.meter, self.ledger, self.governor, self.window, self.parts)
        # The seams' hot paths, called once per turn: instance attributes bound to the parts that do the
        # work, so a turn pays for no extra Python frame (the methods below document the same calls).
        self.run_turn = self.ledger.run_turn  # type: ignore[method-assign]
        self.charge_llm = self.ledger.charge_llm  # type: ignore[method-assign]
        self.charge_storage = self.ledger.charge_storage  # type: ignore[method-assign]
        self.charge_cpu = self.ledger.charge_cpu  # type: ignore[method-assign]
        self._quiet: asyncio.Event | None = None  # set by the first admission after a quiet spell
        self._listeners = 0
        self._last_admit = 0.0  # monotonic time of the last admission
        self.node: GovernedNode | None = None
        self.llm: GovernedLLM | None = None
        self.last_tick_seconds = 0.0
        self._task: asyncio.Task[None] | None = None
        self._updated: asyncio.Event | None = None
        self._closed = False
        self._last_flush = 0.0
        self._last_compact = 0.0

    # ---- wiring and lifecycle ----

    def attach(self, node: GovernedNode | None, llm: GovernedLLM | None) -> None:
        """Give the governor its levers (`node.hibernate_idle`, the LLM service) and the reports their agents."""
        self.node = node
        self.llm = llm
        self.governor.attach(node, llm)

    async def start(self) -> None:
        """Start the 1 Hz tick.

        One tick task is the node's only periodic wake-up: sampling power,
        splitting it, steering the governor, writing history and feeding the
        SSE streams all happen in it, so idle agents never cause a wake-up
        (measured: 200 parked agents + this tick, history included, cost
        0.16–0.30 % of one core). Once a second because the governor decides
        on a 5 s average and Prometheus counters need no finer grain.
        """
        if self._task is not None:
            return
        if self.history is not None:
            midnight = utc_day(time.time()) * 86400.0
            self.ledger.restore_today(await asyncio.to_thread(self.history.agent_joules, midnight))
        self._updated = asyncio.Event()
        self.meter.prime()
        self.ledger.prime()
        if self.parts is not None:
            self.parts.start()
        self._last_flush = self._last_compact = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hero-power-tick")

    async def aclose(self) -> None:
        """Stop the tick (cancel and await it), end the streams, flush history and close the file."""
        self._closed = True
        if self.parts is not None:
            await asyncio.to_thread(self.parts.stop)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._notify()
        if self.history is not None:
            await asyncio.to_thread(self.history.write, self.history.take())
            await asyncio.to_thread(self.history.close)
            self.history = None

    def _is_quiet(self) -> bool:
        """Nothing to govern or show: every agent asleep, no model work queued, no dashboard listening."""
        node, llm = self.node, self.llm
        return (
            self._listeners == 0
            and time.monotonic() - self._last_admit > self.config.quiet_after_s
            and (node is None or node.active_count == 0)
            and (llm is None or llm.queue_depth == 0)
        )

    async def _run(self) -> None:
        """Tick at 1 Hz while the node works; every `quiet_tick_s` while it is quiet, woken early by work.

        Energy still integrates exactly (the meter uses counter deltas over the real interval);
        a quiet node just wakes 10× less often, which is what "near-zero idle" asks.
        """
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if self._is_quiet():
                self._quiet = asyncio.Event()
                with contextlib.suppress(TimeoutError):  # no work came: tick anyway, rarely
                    await asyncio.wait_for(self._quiet.wait(), self.config.quiet_tick_s)
                self._quiet = None
                due = loop.time()
            else:
                due += self.config.tick_s
                delay = due - loop.time()
                if delay < 0:  # fell behind (a long hibernation pass): skip, don't burst
                    due = loop.time()
                    delay = 0.0
                await asyncio.sleep(delay)
            try:
                await self.tick()
            except Exception:
                log.exception("power tick failed; metering continues")

    async def tick(self) -> TickReport | None:
        """One tick: meter → ledger split → governor → history → notify streams."""
        started = time.perf_counter()
        sample = self.meter.read()
        if sample.dt <= 0:
            return None
        now = time.monotonic()
        hosted = len(self._hosted_ids())
        report = self.ledger.tick(sample, hosted=hosted)
        self.window.add(report)
        if not report.conservation_ok:
            log.warning(
                "power split missed the node by %.1f %% (node %.2f W, profile idle %.2f W, source %s)",
                report.conservation_error * 100,
                report.node_w,
                report.idle_w,
                report.source,
            )
        await self.governor.tick(report)
        if self.history is not None:
            self.history.add(report)
            if now - self._last_flush >= self.config.flush_every_s:
                self._last_flush = now
                await asyncio.to_thread(self.history.write, self.history.take())
            if now - self._last_compact >= self.config.compact_every_s:
                self._last_compact = now
                await asyncio.to_thread(self.history.compact, time.time())
        self.last_tick_seconds = time.perf_counter() - started
        self._notify()
        return report

    def _notify(self) -> None:
        ev = self._updated
        if ev is not None:
            self._updated = None if self._closed else asyncio.Event()
            ev.set()

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Yield `node_report()` after every tick until the service closes (slow readers skip ticks)."""
        self._listeners += 1
        if self._quiet is not None:
            self._quiet.set()  # someone is watching: back to 1 Hz now
        try:
            while not self._closed:
                ev = self._updated
                if ev is None:
                    return
                await ev.wait()
                if self._closed:
                    return
                yield self.node_report()
        finally:
            self._listeners -= 1

    # ---- Metering and Admission: bound in __init__ straight to the ledger and governor ----

    def run_turn(self, agent_id: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        return self.ledger.run_turn(agent_id, coro)

    def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
        self.ledger.charge_llm(agent_id, cpu_ns, tokens)

    def charge_storage(self, agent_id: str, nbytes: int) -> None:
        self.ledger.charge_storage(agent_id, nbytes)

    def charge_cpu(self, agent_id: str, cpu_ns: int, part: Literal["loop", "skills"] = "loop") -> None:
        self.ledger.charge_cpu(agent_id, cpu_ns, part)

    def admit(self, agent_id: str, *, interactive: bool) -> None:
        """The governor decides; the first work after a quiet spell also brings the tick back to 1 Hz."""
        quiet = self._quiet
        if quiet is not None:
            quiet.set()
        self._last_admit = time.monotonic()
        self.governor.admit(agent_id, interactive=interactive)

    def set_quota(self, agent_id: str, wh: float | None) -> None:
        self.governor.set_quota(agent_id, wh)

    async def forget(self, agent_id: str) -> None:
        """The agent was deleted: its account, quota and stored history go, so no report or scrape lists it."""
        self.ledger.forget(agent_id)
        self.governor.forget(agent_id)
        if self.history is not None:
            await asyncio.to_thread(self.history.forget, agent_id)

    # ---- reports (the PowerReports seam; their shapes are hero.power.reports) ----

    def now(self) -> float:
        return self.meter.clock()

    def _hosted_ids(self) -> set[str]:
        hosted = {a.agent_id for a in self.ledger.accounts()}
        if self.node is not None:
            hosted.update(self.node.agent_statuses())
        return hosted

    def agent_status(self, agent_id: str) -> str:
        node = self.node
        if node is None:
            return "active" if self.ledger.get(agent_id) is not None else "unknown"
        status = node.agent_status(agent_id)
        if status is not None:
            return str(status)
        return "hibernated" if self.ledger.get(agent_id) is not None else "unknown"

    def agents_by_status(self) -> dict[str, int]:
        counts = {"active": 0, "hibernated": 0}
        for agent_id in self._hosted_ids():
            status = self.agent_status(agent_id)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def node_report(self) -> dict[str, Any]:
        """The node's power split, every watts figure a mean over the same last `window_s` seconds."""
        statuses = {agent_id: self.agent_status(agent_id) for agent_id in self._hosted_ids()}
        return self.reports.node(statuses, self.agents_by_status(), self.llm, self.last_tick_seconds)

    def cpu_report(self) -> dict[str, Any]:
        """CPU-seconds since start: the ledger's exact buckets, and the sampled split by part when enabled."""
        return self.reports.cpu()

    def agent_report(self, agent_id: str) -> dict[str, Any]:
        """One agent's figures: `watts` over the node report's window, `watts_1h` an hour's average."""
        return self.reports.agent(agent_id, self.agent_status(agent_id), self._hosted_ids())

    def agent_average(self) -> dict[str, Any]:
        """Mean watts and Wh today over hosted agents, awake or asleep: all a user may see of others."""
        return self.reports.average(self._hosted_ids())

    def snapshot(self) -> PowerSnapshot:
        """What `/metrics` exposes, read at once."""
        return self.reports.snapshot(self.agents_by_status())

    def _stored(self) -> PowerHistory:
        if self.history is None:
            raise Unavailable("power history is off on this node")
        return self.history

    async def history_rows(self, since: float, *, top: int) -> dict[str, Any]:
        """Stored node rows since `since` (unix) and the `top` agents by energy (DuckDB, off the event loop)."""
        history = self._stored()
        series = await asyncio.to_thread(history.node_series, since)
        agents = await asyncio.to_thread(history.top_agents, since, top)
        return {"since": since, "node": series, "top_agents": agents}

    async def chart(self, window: ChartWindow) -> dict[str, Any]:
        """Node watts and the top agents over `window`, one point per bucket (DuckDB, off the event loop)."""
        return await asyncio.to_thread(power_history, self._stored(), window)
