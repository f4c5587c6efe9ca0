"""The governor's last lever: a hard CPU cap on this process's cgroup, where one is delegated to it.

The soft levers (LLM threads, deferring background work, fair-share gates)
act on Hero's own work; when they are not enough the kernel's CFS quota caps
the whole process. `cpus_within_target` says how many CPUs fit the target
on the profile's power curve, the rest of the machine kept as it is.
"""

from __future__ import annotations

from pathlib import Path

from hero.power.ledger import TickReport
from hero.power.profiles import HardwareProfile


def cpus_within_target(report: TickReport, profile: HardwareProfile, u_per_cpu: float, target_w: float) -> float:
    """How many of this machine's CPUs this process may keep busy for the node to stay at `target_w`.

    `u_per_cpu` is the profile utilisation one busy CPU of this machine adds.
    """
    dt = report.dt if report.dt > 0 else 1.0
    others = max(0.0, report.busy_cpu_s - report.process_cpu_s) / dt  # other processes keep running
    u_others = others * u_per_cpu
    offset = report.node_w - profile.watts(report.utilisation)
    cpus = 0.1
    while cpus < report.host_cpus and offset + profile.watts(u_others + (cpus + 0.1) * u_per_cpu) <= target_w:
        cpus += 0.1
    return round(cpus, 1)


class CpuMaxBackstop:
    """A hard CPU cap on this process's cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), if delegated to us.

    Probing writes the current value back: permission bits say little for
    root and nothing for cgroupfs semantics, so only a real write is proof.
    """

    def __init__(
        self,
        cgroup_fs: Path = Path("/sys/fs/cgroup"),
        proc_self_cgroup: Path = Path("/proc/self/cgroup"),
        period_us: int = 100_000,
    ) -> None:
        self.period_us = period_us
        self.path: Path | None = None
        self.kind = ""
        self.available = False
        self.reason = ""
        self.limit_cpus: float | None = None
        self._probe(cgroup_fs, proc_self_cgroup)

    def _probe(self, fs: Path, self_cgroup: Path) -> None:
        try:
            lines = self_cgroup.read_text().splitlines()
        except OSError as e:
            self.reason = f"cannot read {self_cgroup}: {e}"
            return
        reasons: list[str] = []
        for line in lines:
            hier, controllers, rel = line.split(":", 2)
            rel = rel.lstrip("/")
            if hier == "0" and controllers == "":
                candidates = [fs / rel / "cpu.max", fs / "unified" / rel / "cpu.max"]
                kind = "v2"
            elif "cpu" in controllers.split(","):
                candidates = [fs / controllers / rel / "cpu.cfs_quota_us", fs / "cpu" / rel / "cpu.cfs_quota_us"]
                kind = "v1"
            else:
                continue
            if not rel:
                reasons.append(f"{kind}: the process is in the root cgroup (capping it would cap the machine)")
                continue
            for f in candidates:
                if not f.exists():
                    continue
                try:
                    current = f.read_text()
                    f.write_text(current.strip() + "\n")
                except OSError as e:
                    reasons.append(f"{kind}: {f} not writable ({e.strerror or e})")
                    break
                self.path, self.kind, self.available = f, kind, True
                self.reason = f"ok: {f}"
                return
            else:
                reasons.append(f"{kind}: no cpu controller file for /{rel} (controller not delegated)")
        self.reason = "; ".join(reasons) or "no cgroup with a cpu controller"

    def limit(self, cpus: float | None) -> None:
        """Cap the process at `cpus` CPUs (None lifts the cap)."""
        if not self.available or self.path is None:
            return
        if cpus is None:
            value = "max" if self.kind == "v2" else "-1"
        else:
            quota = max(1000, int(cpus * self.period_us))
            value = f"{quota} {self.period_us}" if self.kind == "v2" else str(quota)
        if self.kind == "v1" and cpus is not None:
            (self.path.parent / "cpu.cfs_period_us").write_text(f"{self.period_us}\n")
        self.path.write_text(value + "\n")
        self.limit_cpus = cpus
