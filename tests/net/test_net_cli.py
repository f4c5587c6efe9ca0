"""The overlay's commands: `hero net` loads only the overlay, and `hero up` takes `hero net up`'s flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hero.config import load_config
from hero.identity import NodeKeys
from hero.net.address import load_or_create_key
from hero.net.agents import AgentBridge, AllowList
from hero.net.embed import start_overlay
from hero.net.service import OverlayService
from hero.runtime.events import OverlayMessage, Reply
from tests.conftest import ROOT, hero_cli, hero_up_on_a_taken_port

# What a standalone overlay node must not load: the other parts' commands and the model stack.
NOT_FOR_THE_OVERLAY = ("llama_cpp", "hero.store", "hero.skills", "hero.scheduler", "hero.cluster", "hero.bench",
                       "hero.runtime.node", "ray")


def test_hero_net_imports_only_the_overlay(tmp_path):
    script = (
        "import json, sys\n"
        "from hero.cli import main\n"
        f"code = main(['net', 'inspect', '--key-file', {str(tmp_path / 'missing')!r}])\n"
        f"print(json.dumps([code, [m for m in sys.modules if m.split('.')[0] in {NOT_FOR_THE_OVERLAY!r} "
        f"or m.startswith({NOT_FOR_THE_OVERLAY!r})]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    code, loaded = json.loads(result.stdout)
    assert code == 2 and "no key file" in result.stderr
    assert loaded == []


def test_hero_help_still_lists_every_part():
    listed = [line.split()[0] for line in hero_cli("--help").stdout.splitlines() if line.startswith("    ")]
    assert listed[:2] == ["up", "user"]
    for command in ("storage", "calibrate", "net", "cluster", "bench", "skill", "agent"):
        assert command in listed, command


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--tun-mtu", "100"], "hero: command line: overlay_tun_mtu must be 1280..65000"),
        (["--hello-interval", "0"], "hero: command line: overlay_hello_interval_s must be > 0"),
        (["--tcp-listen-port", "70000"], "hero: command line: overlay_port must be 0..65535"),
        (["--tun-mtu", "big"], "hero: up: argument --tun-mtu: invalid int value: 'big'"),
    ],
)
def test_hero_up_checks_the_overlay_flags_before_the_port(tmp_path, args, line):
    result = hero_up_on_a_taken_port(tmp_path / "d", *args)
    assert result.returncode == 2
    assert result.stderr.strip() == line


def test_hero_toml_overlay_settings_are_checked(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "hero.toml").write_text("[node]\noverlay_hello_interval_s = -1\n")
    result = hero_up_on_a_taken_port(data)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hero: {data / 'hero.toml'}: overlay_hello_interval_s must be > 0"


async def test_hero_up_overlay_runs_on_the_key_file_and_hello_interval_given(tmp_path):
    key_file = tmp_path / "overlay.key"
    config = load_config(tmp_path, overlay_key_file=str(key_file), overlay_tun="off", overlay_port=0,
                         overlay_api="127.0.0.1:0", overlay_hello_interval_s=0.2)
    keys = NodeKeys.load_or_create(tmp_path)
    bridge = AgentBridge(AllowList(tmp_path / "allow.json"), is_local=lambda agent_id: False)

    async def deliver(agent_id: str, message: OverlayMessage) -> Reply:
        raise AssertionError("no message is sent in this test")

    overlay = await start_overlay(config, keys, bridge, deliver, [])
    assert isinstance(overlay, OverlayService)
    try:
        assert key_file.stat().st_size == 32  # created, as `hero net up` does
        assert overlay.node.identity.address == load_or_create_key(key_file).address != keys.address
        assert (overlay.node.config.hello_interval_s, overlay.node.config.dead_after_s) == (0.2, pytest.approx(0.6))
    finally:
        await overlay.aclose()
        await bridge.aclose()
