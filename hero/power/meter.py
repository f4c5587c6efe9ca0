"""Node power: RAPL energy counters where readable, else the hardware profile's model.

Most VMs and CI runners expose no powercap tree, and since CVE-2020-8694
`energy_uj` is root-only, so the model path is the normal case, not a
fallback to apologise for. Every sample says which one produced it
(`source` = "rapl" | "model").
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from hero.power.config import POWERCAP_ROOT, PROC_STAT
from hero.power.profiles import HardwareProfile

_TOP_LEVEL_ZONE = re.compile(r"^[a-z][a-z-]*:\d+$")  # intel-rapl:0, not the subzone intel-rapl:0:0


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative whole-machine CPU counters (any unit; only ratios of deltas are used)."""

    busy: float
    total: float
    cpus: int


class ProcStat:
    """Machine utilisation from `/proc/stat`: busy = user+nice+system+irq+softirq+steal, as Kepler does.

    A path that does not exist (macOS, BSD) falls back to psutil's counters.
    """

    def __init__(self, path: Path = PROC_STAT) -> None:
        self.path = path

    def read(self) -> CpuTimes:
        if not self.path.exists():
            t = psutil.cpu_times()
            busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
            idle = t.idle + getattr(t, "iowait", 0.0)
            return CpuTimes(busy=busy, total=busy + idle, cpus=psutil.cpu_count() or 1)
        busy = total = 0.0
        cpus = 0
        with self.path.open() as f:
            for line in f:
                if line.startswith("cpu "):
                    v = [int(x) for x in line.split()[1:]]
                    v += [0] * (8 - len(v))
                    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                    busy = float(user + nice + system + irq + softirq + steal)
                    total = busy + idle + iowait
                elif line.startswith("cpu"):
                    cpus += 1
                elif cpus:
                    break
        return CpuTimes(busy=busy, total=total, cpus=max(1, cpus))


@dataclass
class RaplZone:
    path: Path
    name: str
    max_range_uj: int
    last_uj: int


class Rapl:
    """Sum of top-level RAPL zones: `psys` alone if present (whole SoC), else every `package-*`.

    Subzones (core, uncore, dram under a package) are never added: they are
    already inside the package figure. Counters wrap at `max_energy_range_uj`.
    """

    def __init__(self, zones: list[RaplZone]) -> None:
        self.zones = zones

    @classmethod
    def probe(cls, root: Path = POWERCAP_ROOT) -> tuple[Rapl | None, str]:
        """Return a reader, or None and the reason RAPL cannot be used here."""
        if not root.is_dir():
            return None, f"no powercap tree at {root} (typical of VMs and CI runners)"
        found: list[RaplZone] = []
        for d in sorted(root.iterdir()):
            if not _TOP_LEVEL_ZONE.match(d.name) or not (d / "energy_uj").exists():
                continue
            try:
                name = (d / "name").read_text().strip()
                max_range = int((d / "max_energy_range_uj").read_text())
                now = int((d / "energy_uj").read_text())
            except PermissionError:
                return None, f"{d / 'energy_uj'} is root-only (CVE-2020-8694); run as root or use the model"
            except (OSError, ValueError) as e:
                return None, f"cannot read {d}: {e}"
            found.append(RaplZone(path=d, name=name, max_range_uj=max_range, last_uj=now))
        psys = [z for z in found if z.name == "psys"]
        packages = [z for z in found if z.name.startswith("package")]
        zones = psys or packages
        if not zones:
            return None, f"no psys or package zone under {root}"
        return cls(zones), "ok: " + ", ".join(f"{z.path.name}={z.name}" for z in zones)

    def read_joules(self) -> float:
        """Energy since the previous call, in joules, across the chosen zones."""
        total_uj = 0
        for z in self.zones:
            now = int((z.path / "energy_uj").read_text())
            delta = now - z.last_uj
            if delta < 0:  # the counter wrapped
                delta += z.max_range_uj
            z.last_uj = now
            total_uj += delta
        return total_uj / 1e6


@dataclass(frozen=True)
class PowerSample:
    """One meter interval. Watts are at the wall (RAPL is offset by the calibrated platform constant)."""

    t: float  # monotonic seconds at the end of the interval
    dt: float
    watts: float
    source: str  # "rapl" | "model"
    utilisation: float  # of the profile's hardware, in [0, 1]
    host_utilisation: float  # of this machine, from /proc/stat
    busy_cpu_s: float  # CPU-seconds this machine spent busy during dt (all processes)
    host_cpus: int

    @property
    def joules(self) -> float:
        return self.watts * self.dt


class NodeMeter:
    """Node watts over each interval between `read()` calls.

    Utilisation of the profile's hardware is this machine's busy CPU-seconds,
    scaled by the speed ratio, over the profile's core-seconds: on the
    profiled box itself it is just /proc/stat's ratio; on a dev machine it
    emulates the profile.
    """

    def __init__(
        self,
        profile: HardwareProfile,
        *,
        powercap_root: Path = POWERCAP_ROOT,
        proc_stat: Path = PROC_STAT,
        host_speed: float | None = None,
        use_rapl: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.stat = ProcStat(proc_stat)
        self.clock = clock
        self.speed_ratio = (host_speed or profile.cpu_speed) / profile.cpu_speed
        self.rapl: Rapl | None = None
        self.rapl_reason = "disabled"
        if use_rapl:
            self.rapl, self.rapl_reason = Rapl.probe(powercap_root)
        self.source = "rapl" if self.rapl else "model"
        self.wall_offset_w = (
            profile.idle_w - profile.rapl_idle_w if self.rapl and profile.rapl_idle_w is not None else 0.0
        )
        self._last_t = clock()
        self._last_cpu = self.stat.read()

    def prime(self) -> None:
        """Start a fresh interval (discarding energy and CPU since construction or the last read)."""
        self._last_t = self.clock()
        self._last_cpu = self.stat.read()
        if self.rapl:
            self.rapl.read_joules()

    def read(self) -> PowerSample:
        now = self.clock()
        cpu = self.stat.read()
        dt = now - self._last_t
        d_total = cpu.total - self._last_cpu.total
        d_busy = cpu.busy - self._last_cpu.busy
        host_u = min(1.0, max(0.0, d_busy / d_total)) if d_total > 0 else 0.0
        busy_cpu_s = host_u * cpu.cpus * max(dt, 0.0)
        u = busy_cpu_s * self.speed_ratio / (dt * self.profile.cores) if dt > 0 else 0.0
        u = min(1.0, max(0.0, u))
        if self.rapl is not None:
            joules = self.rapl.read_joules()
            watts = (joules / dt if dt > 0 else 0.0) + self.wall_offset_w
        else:
            watts = self.profile.watts(u)
        self._last_t, self._last_cpu = now, cpu
        return PowerSample(
            t=now,
            dt=dt,
            watts=watts,
            source=self.source,
            utilisation=u,
            host_utilisation=host_u,
            busy_cpu_s=busy_cpu_s,
            host_cpus=cpu.cpus,
        )

    def utilisation_per_host_cpu(self) -> float:
        """Profile utilisation added by keeping one of this machine's CPUs busy."""
        return self.speed_ratio / self.profile.cores
