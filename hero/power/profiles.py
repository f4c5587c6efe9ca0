"""Hardware profiles: what a node draws idle and flat out, its budget, and how fast its cores are.

A profile is a small TOML file in the repo's `hardware/` dir (or anywhere, by
path). It is the power model used wherever RAPL is not readable — most VMs
and CI runners — so it is validated strictly: a model whose curve disagrees
with its own idle figure would break the ledger's conservation check.
"""

from __future__ import annotations

import bisect
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hero.errors import UsageError

DEFAULT_PROFILE = "zos-edge-60w"
_CURVE_TOLERANCE_W = 0.01


def hardware_dir() -> Path:
    """The repo's shipped profiles live next to the `hero` package (a namespace package: no `hero.__file__`)."""
    return Path(__file__).resolve().parents[2] / "hardware"


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    cores: int
    ram_gb: float
    idle_w: float  # at the wall, all agents parked
    max_w: float  # at the wall, every core busy
    budget_w: float  # what the governor keeps the node under
    cpu_speed: float = 1.0  # single-core throughput against the calibration machine
    curve: tuple[tuple[float, float], ...] = ()  # optional (utilisation, watts) points, 0 → 1
    rapl_idle_w: float | None = None  # RAPL (CPU + DRAM only) reading at idle, to offset RAPL to the wall
    source: str = "datasheet"  # how idle/max were obtained: datasheet | calibrated-wall | calibrated-rapl | default
    description: str = ""
    llm_tokens_per_s: float | None = None
    llm_threads: int | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        def bad(msg: str) -> UsageError:
            return UsageError(f"hardware profile {self.name!r}: {msg}")

        if not isinstance(self.cores, int) or self.cores < 1:
            raise bad("cores must be a positive integer")
        for key in ("idle_w", "max_w", "budget_w", "cpu_speed", "ram_gb"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise bad(f"{key} must be a non-negative number")
        if self.max_w <= self.idle_w:
            raise bad(f"max_w ({self.max_w}) must be above idle_w ({self.idle_w})")
        if self.budget_w <= self.idle_w:
            raise bad(f"budget_w ({self.budget_w}) must be above idle_w ({self.idle_w}): nothing could run")
        if self.cpu_speed <= 0:
            raise bad("cpu_speed must be above 0")
        if self.rapl_idle_w is not None and not 0 <= self.rapl_idle_w <= self.idle_w:
            raise bad("rapl_idle_w must be between 0 and idle_w (RAPL sees only part of the wall power)")
        if self.curve:
            us = [u for u, _ in self.curve]
            if us[0] != 0.0 or us[-1] != 1.0 or any(b <= a for a, b in itertools.pairwise(us)):
                raise bad("curve utilisations must rise strictly from 0.0 to 1.0")
            if abs(self.curve[0][1] - self.idle_w) > _CURVE_TOLERANCE_W:
                raise bad(f"curve starts at {self.curve[0][1]} W but idle_w is {self.idle_w}")
            if abs(self.curve[-1][1] - self.max_w) > _CURVE_TOLERANCE_W:
                raise bad(f"curve ends at {self.curve[-1][1]} W but max_w is {self.max_w}")

    @property
    def dynamic_w(self) -> float:
        return self.max_w - self.idle_w

    def watts(self, utilisation: float) -> float:
        """Modelled wall power at a utilisation, clamped to [0, 1]: the curve if given, else linear."""
        u = min(1.0, max(0.0, utilisation))
        if not self.curve:
            return self.idle_w + self.dynamic_w * u
        us = [p[0] for p in self.curve]
        i = bisect.bisect_right(us, u)
        if i >= len(self.curve):
            return self.curve[-1][1]
        (u0, w0), (u1, w1) = self.curve[i - 1], self.curve[i]
        return w0 + (w1 - w0) * (u - u0) / (u1 - u0)

    def to_toml(self) -> str:
        """Serialise as the TOML `load_profile` reads (no writer library needed for flat fields)."""
        lines = [f"name = {_toml_str(self.name)}"]
        if self.description:
            lines.append(f"description = {_toml_str(self.description)}")
        lines += [
            f"source = {_toml_str(self.source)}",
            f"cores = {self.cores}",
            f"ram_gb = {_num(self.ram_gb)}",
            f"idle_w = {_num(self.idle_w)}",
            f"max_w = {_num(self.max_w)}",
            f"budget_w = {_num(self.budget_w)}",
            f"cpu_speed = {_num(self.cpu_speed)}",
        ]
        if self.rapl_idle_w is not None:
            lines.append(f"rapl_idle_w = {_num(self.rapl_idle_w)}")
        if self.llm_tokens_per_s is not None:
            lines.append(f"llm_tokens_per_s = {_num(self.llm_tokens_per_s)}")
        if self.llm_threads is not None:
            lines.append(f"llm_threads = {self.llm_threads}")
        if self.curve:
            points = ", ".join(f"[{_num(u)}, {_num(w)}]" for u, w in self.curve)
            lines.append(f"curve = [{points}]")
        return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return repr(round(float(x), 4))


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_FIELDS = {
    "name",
    "cores",
    "ram_gb",
    "idle_w",
    "max_w",
    "budget_w",
    "cpu_speed",
    "curve",
    "rapl_idle_w",
    "source",
    "description",
    "llm_tokens_per_s",
    "llm_threads",
}


def available_profiles(directory: Path | None = None) -> list[str]:
    d = directory or hardware_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def parse_profile(data: dict[str, Any], *, name: str, path: Path | None = None) -> HardwareProfile:
    unknown = set(data) - _FIELDS
    if unknown:
        raise UsageError(f"hardware profile {name!r}: unknown field(s) {', '.join(sorted(unknown))}")
    missing = {"cores", "idle_w", "max_w", "budget_w"} - set(data)
    if missing:
        raise UsageError(f"hardware profile {name!r}: missing field(s) {', '.join(sorted(missing))}")
    raw_curve = data.get("curve", [])
    try:
        curve = tuple((float(u), float(w)) for u, w in raw_curve)
    except (TypeError, ValueError) as e:
        raise UsageError(f"hardware profile {name!r}: curve must be a list of [utilisation, watts] pairs") from e
    return HardwareProfile(
        name=str(data.get("name", name)),
        cores=data["cores"],
        ram_gb=float(data.get("ram_gb", 0.0)),
        idle_w=float(data["idle_w"]),
        max_w=float(data["max_w"]),
        budget_w=float(data["budget_w"]),
        cpu_speed=float(data.get("cpu_speed", 1.0)),
        curve=curve,
        rapl_idle_w=None if data.get("rapl_idle_w") is None else float(data["rapl_idle_w"]),
        source=str(data.get("source", "datasheet")),
        description=str(data.get("description", "")),
        llm_tokens_per_s=None if data.get("llm_tokens_per_s") is None else float(data["llm_tokens_per_s"]),
        llm_threads=None if data.get("llm_threads") is None else int(data["llm_threads"]),
        path=path,
    )


def load_profile(name_or_path: str | Path | None = None, *, directory: Path | None = None) -> HardwareProfile:
    """Load a profile by name from `hardware/`, or by path (anything with a `/` or ending in .toml)."""
    ref = str(name_or_path or DEFAULT_PROFILE)
    if "/" in ref or ref.endswith(".toml"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise UsageError(f"hardware profile file {ref} not found")
    else:
        d = directory or hardware_dir()
        path = d / f"{ref}.toml"
        if not path.is_file():
            names = ", ".join(available_profiles(d)) or "none"
            raise UsageError(f"unknown hardware profile {ref!r}; available: {names}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"hardware profile {path}: {e}") from e
    return parse_profile(data, name=path.stem, path=path)
