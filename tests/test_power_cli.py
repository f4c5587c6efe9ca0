"""`hero calibrate`: busy-loop steps on this machine, wall readings typed in, the profile it writes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from hero.errors import UsageError
from hero.power.calibrate import calibrate, measure_llm
from hero.power.cli import add_power_parser
from hero.power.profiles import load_profile


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hero")
    add_power_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_calibrate_with_wall_endpoints_writes_a_loadable_profile(tmp_path: Path, capsys) -> None:
    out = tmp_path / "box.toml"
    rc = run(
        "calibrate",
        "--seconds",
        "0.2",
        "--cores",
        "1",
        "--no-llm",
        "--wall-idle",
        "11",
        "--wall-max",
        "33",
        "--budget",
        "30",
        "--name",
        "box",
        "--out",
        str(out),
        "--json",
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["profile_path"] == str(out)
    steps = result["steps"]
    assert [s["busy"] for s in steps] == [0, 1]
    assert steps[0]["loop_core_share"] is None
    assert steps[1]["loop_core_share"] > 0.1  # the busy loop really ran (~a full core on a quiet machine)
    assert result["llm"] == {"skipped": "--no-llm"}
    profile = load_profile(str(out))
    assert (profile.name, profile.idle_w, profile.max_w, profile.budget_w) == ("box", 11.0, 33.0, 30.0)
    assert profile.source == "calibrated-wall" and profile.cores == 1 and profile.cpu_speed > 0


def test_wall_readings_per_step_become_the_curve() -> None:
    asked: list[tuple[int, int]] = []

    def meter(busy: int, cores: int) -> float:
        asked.append((busy, cores))
        return 10.0 + 10.0 * busy

    result = calibrate(seconds=0.1, cores=1, ask_wall=meter, llm=False)
    assert asked == [(0, 1), (1, 1)]
    profile = result.to_profile("walled")
    assert profile.curve == ((0.0, 10.0), (1.0, 20.0))
    assert profile.watts(0.25) == pytest.approx(12.5)
    assert profile.budget_w == 20.0  # no budget given and max below 60 W: the max


def test_with_no_measurement_the_profile_says_default() -> None:
    result = calibrate(seconds=0.1, cores=1, llm=False, powercap_root=Path("/nonexistent"))
    profile = result.to_profile("guess", budget=60.0)
    assert profile.source == "default" and profile.max_w == 60.0 and profile.idle_w == 15.0
    assert "no powercap" in result.rapl


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--wall-idle", "10"], "both"),
        (["--wall-idle", "40", "--wall-max", "30"], "below"),
        (["--seconds", "0", "--no-prompt"], "seconds"),
        (["--cores", "999", "--no-prompt"], "cores"),
        (["--budget", "-1"], "budget"),
    ],
)
def test_bad_input_is_a_usage_error(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=message):
        run("calibrate", "--no-llm", "--out", str(tmp_path / "x.toml"), *argv)


@pytest.mark.model
def test_llm_tokens_per_second_step() -> None:
    result = measure_llm(threads=1)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["tokens"] > 0 and result["tokens_per_s"] > 0 and result["load_seconds"] > 0
