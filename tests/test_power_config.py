"""The `[power]` table of `DATA/hero.toml`: it sets the governor, the tick and the history; a bad key is one line."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hero.config import load_config
from hero.errors import UsageError
from hero.power.config import TABLE_KEYS, GovernorConfig, HistoryRetention, PowerConfig, parse_power_table
from tests.conftest import auth, free_port, hero_up_on_a_taken_port, operator_token, serving

TABLE = """
[node]
idle_after_s = 60

[power]
daily_quota_wh = 0.5
unload_after_s = false
window_s = 2
headroom = 0.2
tick_s = 0.5
history = false
raw_keep_s = 600
"""


def test_the_table_sets_governor_service_and_retention_and_leaves_the_rest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hero.toml").write_text(TABLE)
    config = load_config(data)
    assert config.idle_after_s == 60.0
    assert config.power == PowerConfig(
        tick_s=0.5,
        history=False,
        governor=GovernorConfig(daily_quota_wh=0.5, unload_after_s=None, window_s=2.0, headroom=0.2),
        retention=HistoryRetention(raw_keep_s=600.0),
    )
    assert isinstance(config.power.governor.window_s, float)  # a TOML integer is a number of seconds too
    (data / "hero.toml").write_text("[node]\nport = 9001\n")
    assert load_config(data).power == PowerConfig()  # no [power] table: the defaults


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ({"window": 5}, "hero.toml: unknown setting 'window' in [power]"),
        ({"window_s": "5"}, "hero.toml: [power] window_s must be a number of seconds > 0, got '5'"),
        ({"window_s": 0}, "hero.toml: [power] window_s must be a number of seconds > 0, got 0"),
        ({"unload_after_s": True}, "hero.toml: [power] unload_after_s must be a number of seconds > 0, or false "
                                   "(never unload), got True"),
        ({"daily_quota_wh": -1}, "hero.toml: [power] daily_quota_wh must be a number of Wh > 0, or false "
                                 "(no quota), got -1"),
        ({"headroom": 1.0}, "hero.toml: [power] headroom must be a number from 0 to below 1, got 1.0"),
        ({"release_after_ticks": 2.5}, "hero.toml: [power] release_after_ticks must be a whole number >= 1, got 2.5"),
        ({"clock": "wall"}, 'hero.toml: [power] clock must be "adaptive" or "thread", got \'wall\''),
        ({"history": 1}, "hero.toml: [power] history must be true or false, got 1"),
        ({"tick_s": float("nan")}, "hero.toml: [power] tick_s must be a number of seconds > 0, got nan"),
        ({"raw_keep_s": 7200, "minute_keep_s": 3600},
         "hero.toml: [power] raw_keep_s <= minute_keep_s <= retention_s must hold"),
    ],
)
def test_a_bad_key_is_one_line_naming_it(table: dict, line: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_power_table(table, "hero.toml")
    assert str(err.value.message) == line


def test_every_key_of_the_table_is_a_setting_and_the_readme_lists_it() -> None:
    settings = {f for f in PowerConfig.__dataclass_fields__} | set(GovernorConfig.__dataclass_fields__)
    settings |= set(HistoryRetention.__dataclass_fields__)
    assert set(TABLE_KEYS) <= settings
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [key for key in TABLE_KEYS if f"`{key}`" not in readme and f"\n{key} = " not in readme]
    assert missing == [], f"README's [power] section does not name {missing}"


def test_hero_up_with_a_bad_power_table_is_one_line_before_the_port(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "hero.toml").write_text("[power]\nunload_after_s = 'soon'\n")
    result = hero_up_on_a_taken_port(data)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"hero: {data / 'hero.toml'}: [power] unload_after_s must be a number of seconds > 0, or false "
        "(never unload), got 'soon'"
    )


async def test_the_running_nodes_governor_uses_the_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hero.toml").write_text(TABLE)
    config = load_config(data, port=free_port(), max_tokens=24, n_ctx=1024, overlay="off")
    async with serving(config) as parts, httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
        report = (await http.get("/api/node/power", headers=auth(operator_token(data)))).json()
        assert parts.power.history is None  # history = false
    governor = report["governor"]
    assert governor["daily_quota_wh"] == 0.5 and governor["window_s"] == 2.0 and governor["headroom"] == 0.2
    assert report["llm"]["unload_after_s"] is None  # unload_after_s = false: the model stays loaded
    assert report["target_watts"] == pytest.approx(60.0 * 0.8)
