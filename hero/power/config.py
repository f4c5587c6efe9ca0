"""The power part's settings, and the `[power]` table of `DATA/hero.toml` that sets them.

Every setting has a default that suits a node on its own (a 5 s budget window, the
model unloaded after 10 minutes with no request, no daily quota). The table is
checked as strictly as `[node]`: an unknown key or a value of the wrong kind or range
is one line naming the key (`hero up` exits 2), never a node that runs with a
setting it silently ignored. Kept free of heavy imports: `hero.config` reads it for
every command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hero.errors import UsageError
from hero.power.metering import EXACT_AFTER_NS

POWERCAP_ROOT = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")


@dataclass
class GovernorConfig:
    headroom: float = 0.10  # target = budget × (1 − headroom)
    window_s: float = 5.0  # the average the budget applies to
    busy_fraction: float = 0.8  # above this share of the target, over-quota agents wait
    retry_after_s: float = 5.0  # for deferred background work: one averaging window
    gate_retry_after_s: float = 1.0  # gates last one tick
    unload_after_s: float | None = 600.0  # unload the model after this long with no request; None = never
    early_hibernate_after_s: float = 30.0  # idle time after which agents are hibernated when constrained
    daily_quota_wh: float | None = None  # per agent, dynamic energy; None = no quota
    release_after_ticks: int = 5  # normal ticks before the cgroup cap is lifted
    agents_floor: float = 0.5  # agents together may always use this share of the dynamic budget


@dataclass(frozen=True)
class HistoryRetention:
    raw_keep_s: float = 3600.0  # 1 s rows for an hour
    minute_keep_s: float = 7 * 86400.0  # 1 min rows for a week
    retention_s: float = 90 * 86400.0  # 1 h rows until then


@dataclass
class PowerConfig:
    clock: str = "adaptive"  # per-step clock: "adaptive" (wall for short steps, CPU for long) or "thread"
    tick_s: float = 1.0
    quiet_tick_s: float = 10.0  # tick period while no agent is awake, no model work waits and nobody watches
    quiet_after_s: float = 5.0  # ... and no work was admitted for this long (the governor's averaging window)
    flush_every_s: float = 10.0
    compact_every_s: float = 600.0
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    retention: HistoryRetention = field(default_factory=HistoryRetention)
    host_speed: float | None = None  # this machine's cpu_speed, to emulate a profile on other hardware
    use_rapl: bool = True
    powercap_root: Path = POWERCAP_ROOT
    proc_stat: Path = PROC_STAT
    cgroup_backstop: bool = True
    cgroup_fs: Path = Path("/sys/fs/cgroup")
    proc_self_cgroup: Path = Path("/proc/self/cgroup")
    history: bool = True
    cpu_parts_hz: float = 0.0  # > 0: sample where the process's CPU goes by part (hero.power.parts); off by default


# ---- the [power] table ----


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


# key -> (what it must be, check); `false` turns the optional ones off (their None)
_POSITIVE_S = ("a number of seconds > 0", _positive)
_SWITCH = ("true or false", lambda v: isinstance(v, bool))
_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    # the governor
    "headroom": ("a number from 0 to below 1", lambda v: _number(v) and 0 <= v < 1),
    "window_s": _POSITIVE_S,
    "busy_fraction": ("a number above 0 and at most 1", lambda v: _number(v) and 0 < v <= 1),
    "retry_after_s": _POSITIVE_S,
    "gate_retry_after_s": _POSITIVE_S,
    "unload_after_s": ("a number of seconds > 0, or false (never unload)", lambda v: v is False or _positive(v)),
    "early_hibernate_after_s": ("a number of seconds >= 0", lambda v: _number(v) and v >= 0),
    "daily_quota_wh": ("a number of Wh > 0, or false (no quota)", lambda v: v is False or _positive(v)),
    "release_after_ticks": ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "agents_floor": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    # the service
    "clock": (" or ".join(f'"{name}"' for name in EXACT_AFTER_NS), lambda v: v in EXACT_AFTER_NS),
    "tick_s": _POSITIVE_S,
    "quiet_tick_s": _POSITIVE_S,
    "quiet_after_s": _POSITIVE_S,
    "flush_every_s": _POSITIVE_S,
    "compact_every_s": _POSITIVE_S,
    "use_rapl": _SWITCH,
    "cgroup_backstop": _SWITCH,
    "history": _SWITCH,
    # the history's retention
    "raw_keep_s": _POSITIVE_S,
    "minute_keep_s": _POSITIVE_S,
    "retention_s": _POSITIVE_S,
}
_GOVERNOR = {f.name for f in fields(GovernorConfig)}
_RETENTION = {f.name for f in fields(HistoryRetention)}
TABLE_KEYS = tuple(_RULES)  # what `[power]` may set (the README lists them)


def parse_power_table(table: Any, origin: str, base: PowerConfig | None = None) -> PowerConfig:
    """`base` (the defaults) with the `[power]` table of `origin` applied; UsageError names a bad key."""
    config = base or PowerConfig()
    if not isinstance(table, Mapping):
        raise UsageError(f"{origin}: [power] must be a table of settings")
    values: dict[str, Any] = {}
    for name, value in table.items():
        rule = _RULES.get(name)
        if rule is None:
            raise UsageError(f"{origin}: unknown setting {name!r} in [power]")
        what, ok = rule
        if not ok(value):
            raise UsageError(f"{origin}: [power] {name} must be {what}, got {value!r}")
        if value is False and name in ("unload_after_s", "daily_quota_wh"):
            value = None
        elif _number(value) and name != "release_after_ticks":
            value = float(value)
        values[name] = value
    governor = {k: v for k, v in values.items() if k in _GOVERNOR}
    retention = {k: v for k, v in values.items() if k in _RETENTION}
    service = {k: v for k, v in values.items() if k not in _GOVERNOR and k not in _RETENTION}
    kept = replace(config.retention, **retention)
    if not kept.raw_keep_s <= kept.minute_keep_s <= kept.retention_s:
        raise UsageError(f"{origin}: [power] raw_keep_s <= minute_keep_s <= retention_s must hold")
    return replace(config, governor=replace(config.governor, **governor), retention=kept, **service)
