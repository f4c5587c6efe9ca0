"""Hardware profiles, the RAPL reader on a fake sysfs tree, /proc/stat utilisation and the model fallback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hero.errors import UsageError
from hero.power.meter import NodeMeter, ProcStat, Rapl
from hero.power.profiles import DEFAULT_PROFILE, available_profiles, load_profile

# ---- profiles ----


def test_shipped_profiles_load_and_the_default_is_the_60w_edge_box() -> None:
    names = available_profiles()
    assert {"zos-edge-60w", "sbc-15w", "server-1u-250w"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.max_w > p.idle_w and p.budget_w > p.idle_w and p.cores >= 1
    default = load_profile(None)
    assert default.name == DEFAULT_PROFILE == "zos-edge-60w"
    assert default.budget_w == 60.0 and default.cores == 8


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(UsageError) as err:
        load_profile("no-such-box")
    assert "zos-edge-60w" in err.value.message and "sbc-15w" in err.value.message


def test_profile_by_path_and_validation(tmp_path: Path) -> None:
    good = tmp_path / "box.toml"
    good.write_text("cores = 4\nidle_w = 5.0\nmax_w = 25.0\nbudget_w = 20.0\n")
    p = load_profile(str(good))
    assert p.name == "box" and p.cpu_speed == 1.0 and p.curve == ()
    bad = tmp_path / "bad.toml"
    bad.write_text("cores = 4\nidle_w = 30.0\nmax_w = 25.0\nbudget_w = 20.0\n")
    with pytest.raises(UsageError, match="max_w"):
        load_profile(str(bad))
    curve = tmp_path / "curve.toml"
    curve.write_text("cores = 4\nidle_w = 5.0\nmax_w = 25.0\nbudget_w = 20.0\ncurve = [[0.0, 6.0], [1.0, 25.0]]\n")
    with pytest.raises(UsageError, match="curve starts"):
        load_profile(str(curve))
    typo = tmp_path / "typo.toml"
    typo.write_text("cores = 4\nidle_w = 5.0\nmax_w = 25.0\nbudget_w = 20.0\nidel_w = 3\n")
    with pytest.raises(UsageError, match="idel_w"):
        load_profile(str(typo))


def test_model_endpoints_clamp_and_curve() -> None:
    p = load_profile("zos-edge-60w")
    assert p.watts(0.0) == p.idle_w
    assert p.watts(1.0) == p.max_w
    assert p.watts(1.7) == p.max_w and p.watts(-0.2) == p.idle_w
    assert p.watts(0.125) == pytest.approx((12.0 + 31.0) / 2)  # halfway between the first two curve points
    linear = replace(p, curve=())
    assert linear.watts(0.5) == pytest.approx(p.idle_w + 0.5 * (p.max_w - p.idle_w))


def test_profile_round_trips_through_toml(tmp_path: Path) -> None:
    p = load_profile("server-1u-250w")
    out = tmp_path / "copy.toml"
    out.write_text(p.to_toml())
    q = load_profile(str(out))
    assert replace(q, path=None) == replace(p, path=None)


# ---- /proc/stat ----


class FakeStat:
    """A fake /proc/stat: whole-machine counters in jiffies, advanced by the test."""

    def __init__(self, path: Path, cpus: int = 2) -> None:
        self.path = path
        self.cpus = cpus
        self.v = {"user": 1000, "nice": 0, "system": 500, "idle": 8000, "iowait": 100, "irq": 0, "softirq": 10}
        self.write()

    def advance(self, busy: int, idle: int) -> None:
        self.v["user"] += busy
        self.v["idle"] += idle
        self.write()

    def write(self) -> None:
        v = self.v
        fields = f"{v['user']} {v['nice']} {v['system']} {v['idle']} {v['iowait']} {v['irq']} {v['softirq']} 0 0 0"
        lines = [f"cpu  {fields}"] + [f"cpu{i} {fields}" for i in range(self.cpus)]
        lines += ["intr 12345", "ctxt 999"]
        self.path.write_text("\n".join(lines) + "\n")


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_proc_stat_counts_busy_as_kepler_does(tmp_path: Path) -> None:
    stat = FakeStat(tmp_path / "stat", cpus=4)
    t = ProcStat(stat.path).read()
    assert t.cpus == 4
    assert t.busy == 1000 + 500 + 10 and t.total == t.busy + 8000 + 100  # iowait counts as idle


# ---- RAPL against a fake sysfs tree ----


def zone(root: Path, name: str, label: str, uj: int, max_uj: int = 1_000_000_000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def test_rapl_reads_only_top_level_package_zones_and_handles_wraparound(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control-type dir: no energy_uj, skipped
    pkg0 = zone(root, "intel-rapl:0", "package-0", 999_000_000)
    core = zone(root, "intel-rapl:0:0", "core", 500)  # a subzone: already inside package-0
    pkg1 = zone(root, "intel-rapl:1", "package-1", 10_000_000)
    rapl, reason = Rapl.probe(root)
    assert rapl is not None and reason.startswith("ok")
    assert sorted(z.name for z in rapl.zones) == ["package-0", "package-1"]
    (pkg0 / "energy_uj").write_text("4000000\n")  # wrapped: 999 → 1000 (range) → 4 J
    (pkg1 / "energy_uj").write_text("13000000\n")  # +3 J
    (core / "energy_uj").write_text("900000000\n")  # ignored
    assert rapl.read_joules() == pytest.approx(5.0 + 3.0)
    assert rapl.read_joules() == 0.0


def test_rapl_prefers_psys(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    psys = zone(root, "intel-rapl:1", "psys", 0)
    rapl, _ = Rapl.probe(root)
    assert rapl is not None and [z.name for z in rapl.zones] == ["psys"]
    (psys / "energy_uj").write_text("2500000\n")
    assert rapl.read_joules() == pytest.approx(2.5)


def test_node_meter_uses_rapl_with_the_wall_offset(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", 0)
    stat = FakeStat(tmp_path / "stat", cpus=8)
    clock = FakeClock()
    profile = replace(load_profile("zos-edge-60w"), rapl_idle_w=4.0)  # RAPL reads 8 W less than the wall
    meter = NodeMeter(profile, powercap_root=root, proc_stat=stat.path, clock=clock)
    assert meter.source == "rapl" and meter.wall_offset_w == 8.0
    clock.t += 2.0
    stat.advance(busy=400, idle=1200)
    (pkg / "energy_uj").write_text("30000000\n")  # 30 J in 2 s = 15 W
    s = meter.read()
    assert s.source == "rapl" and s.dt == 2.0
    assert s.watts == pytest.approx(15.0 + 8.0)
    assert s.host_utilisation == pytest.approx(0.25)


def test_unreadable_rapl_falls_back_to_the_model_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    d = root / "intel-rapl:0"
    d.mkdir(parents=True)
    (d / "name").write_text("package-0\n")
    (d / "max_energy_range_uj").write_text("1000\n")
    (d / "energy_uj").mkdir()  # reading it fails, as a root-only file does for a normal user
    stat = FakeStat(tmp_path / "stat")
    meter = NodeMeter(load_profile("zos-edge-60w"), powercap_root=root, proc_stat=stat.path)
    assert meter.source == "model" and "cannot read" in meter.rapl_reason


def test_no_powercap_uses_the_model_from_proc_stat(tmp_path: Path) -> None:
    stat = FakeStat(tmp_path / "stat", cpus=8)
    clock = FakeClock()
    profile = load_profile("zos-edge-60w")
    meter = NodeMeter(profile, powercap_root=tmp_path / "absent", proc_stat=stat.path, clock=clock)
    assert meter.source == "model" and "no powercap" in meter.rapl_reason
    clock.t += 1.0
    stat.advance(busy=400, idle=400)  # half of 8 CPUs busy
    s = meter.read()
    assert s.source == "model"
    assert s.utilisation == pytest.approx(0.5) and s.busy_cpu_s == pytest.approx(4.0)
    assert s.watts == pytest.approx(profile.watts(0.5)) == pytest.approx(46.0)
    clock.t += 1.0
    stat.advance(busy=0, idle=800)
    assert meter.read().watts == pytest.approx(profile.idle_w)


def test_model_emulates_a_profile_on_other_hardware(tmp_path: Path) -> None:
    """2 busy CPUs here, on an 8-core profile whose cores are half as fast: U = 2 × 2 / 8."""
    stat = FakeStat(tmp_path / "stat", cpus=2)
    clock = FakeClock()
    profile = replace(load_profile("zos-edge-60w"), cpu_speed=0.5, curve=())
    meter = NodeMeter(profile, powercap_root=tmp_path / "absent", proc_stat=stat.path, clock=clock, host_speed=1.0)
    clock.t += 1.0
    stat.advance(busy=200, idle=0)
    s = meter.read()
    assert s.utilisation == pytest.approx(0.5)
    assert meter.utilisation_per_host_cpu() == pytest.approx(0.25)


def test_real_machine_meter_reads_something_sane() -> None:
    meter = NodeMeter(load_profile("zos-edge-60w"))
    s = meter.read()
    assert s.source in ("rapl", "model")
    assert 0.0 <= s.utilisation <= 1.0 and s.host_cpus >= 1
