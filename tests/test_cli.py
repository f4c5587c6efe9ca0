"""The `hero` command as a user runs it: JSON shapes, misuse, and a node process that restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, hero_cli, hero_json, hero_up_on_a_taken_port


def test_user_add_list_revoke_and_operator_token(tmp_path):
    data = str(tmp_path / "data")
    alice = hero_json("user", "add", "alice", "--data", data)
    assert set(alice) >= {"name", "agent_id", "token", "secret_key"}
    assert alice["name"] == "alice" and len(alice["agent_id"]) == 64
    users = hero_json("user", "list", "--data", data)
    assert [(u["name"], u["agent_id"], u["revoked"]) for u in users] == [("alice", alice["agent_id"], False)]
    own_key = "ab" * 32
    bob = hero_json("user", "add", "bob", "--pubkey", own_key, "--data", data)
    assert bob["agent_id"] == own_key and "secret_key" not in bob
    assert hero_json("user", "revoke", "bob", "--data", data)["revoked"] is True
    operator = hero_json("operator", "token", "--data", data)
    assert operator["token"].startswith("hero1.") and operator["expires"] > time.time()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["user", "add", "Bad Name!"], "invalid user name"),
        (["user", "add", "x", "--pubkey", "zz"], "agent id"),
        (["user", "revoke", "nobody"], "no user"),
        (["up", "--port", "notaport"], "invalid int"),
        (["up", "--port", "70000"], "port"),
        (["up", "--model", "/nonexistent.gguf"], "model file not found"),
        (["frobnicate"], "invalid choice"),
        (["user", "add"], "required"),
    ],
)
def test_misuse_is_one_line_and_exit_2(tmp_path, args, needle):
    result = hero_cli(*args, "--data", str(tmp_path / "d"), check=False) if args[0] != "frobnicate" else hero_cli(
        *args, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hero: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_user_is_refused(tmp_path):
    data = str(tmp_path / "data")
    hero_json("user", "add", "alice", "--data", data)
    result = hero_cli("user", "add", "alice", "--data", data, check=False)
    assert result.returncode == 2 and "already exists" in result.stderr


class NodeProcess:
    """`hero up` in a real subprocess on a free port."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hero.cli", "up", "--data", str(data), "--port", str(self.port), *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("hero: model"):
                break
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("node did not come up: " + "".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return "".join(self.lines) + (out or "")


def chat(node: NodeProcess, token: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "hero", "messages": [{"role": "user", "content": text}]},
        timeout=60,
    )


def history(node: NodeProcess, token: str) -> list[str]:
    r = httpx.get(f"{node.url}/api/me/messages", headers={"Authorization": f"Bearer {token}"})
    return [m["content"] for m in r.json()["messages"]]


def test_first_start_prints_sign_in_urls_and_summary(tmp_path):
    node = NodeProcess(tmp_path / "data")
    try:
        banner = "".join(node.lines)
        assert "First start" in banner and f"{node.url}/?token=hero1." in banner
        assert f"{node.url}/dashboard?token=hero1." in banner
        summary = next(line for line in node.lines if line.startswith("hero: model"))
        for part in ("SmolLM2-135M-Instruct", "zos-edge-60w", str(tmp_path / "data"), node.url):
            assert part in summary
        token = banner.split("/?token=")[1].split()[0]
        assert chat(node, token, "remember that the sky is blue").status_code == 200
    finally:
        node.stop()
    again = NodeProcess(tmp_path / "data")
    assert "First start" not in "".join(again.lines)
    again.stop()


def test_restart_keeps_history_and_fires_pending_timer(tmp_path):
    data = tmp_path / "data"
    user = hero_json("user", "add", "alice", "--data", str(data))
    node = NodeProcess(data)
    try:
        assert chat(node, user["token"], "remember that I like green").status_code == 200
        r = chat(node, user["token"], "remind me in 4 seconds to drink water")
        assert r.json()["choices"][0]["message"]["content"].startswith("OK, I will remind you")
    finally:
        output = node.stop(signal.SIGTERM)
    assert node.proc.returncode == 0, output
    assert "hibernating agents" in output
    agents = hero_json("agents", "--data", str(data))
    assert [(a["agent_id"], a["status"], a["user"]) for a in agents] == [(user["agent_id"], "hibernated", "alice")]
    node = NodeProcess(data)
    try:
        assert history(node, user["token"])[:2] == ["remember that I like green", "I will remember that I like green."]
        deadline = time.time() + 15
        while time.time() < deadline and "⏰ Reminder: drink water" not in history(node, user["token"]):
            time.sleep(0.2)
        assert history(node, user["token"])[-1] == "⏰ Reminder: drink water"
    finally:
        node.stop()


def test_accepted_message_survives_kill_9(tmp_path):
    data = tmp_path / "data"
    user = hero_json("user", "add", "alice", "--data", str(data))
    node = NodeProcess(data)
    with httpx.stream(
        "POST",
        f"{node.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {user['token']}"},
        json={"stream": True, "messages": [{"role": "user", "content": "Write a long story about a dragon"}]},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        node.proc.send_signal(signal.SIGKILL)  # killed right after the 200, mid-reply
    node.proc.communicate(timeout=10)
    node = NodeProcess(data)
    try:
        assert history(node, user["token"])[0] == "Write a long story about a dragon"
    finally:
        node.stop()


def test_agents_command_asks_running_node(tmp_path):
    data = tmp_path / "data"
    user = hero_json("user", "add", "alice", "--data", str(data))
    node = NodeProcess(data)
    try:
        chat(node, user["token"], "remember that x")
        agents = json.loads(hero_cli("agents", "--data", str(data), "--url", node.url, "--json").stdout)
        assert [(a["status"], a["user"]) for a in agents] == [("active", "alice")]
    finally:
        node.stop()


def test_busy_port_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = hero_cli("up", "--data", str(tmp_path / "d"), "--port", str(port), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hero: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_unknown_profile_lists_the_available_ones(tmp_path):
    result = hero_cli("up", "--data", str(tmp_path / "d"), "--port", str(free_port()), "--profile", "nope",
                      check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hero: unknown hardware profile 'nope'; available: sbc-15w, server-1u-250w, zos-edge-60w"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "missing command: up, user, operator, agents, storage, calibrate"),
        (["user"], "user: missing action: add, list, revoke, token"),
        (["operator"], "operator: missing action: token"),
        (["storage"], "storage: missing action: put, get, versions, keys, status, scrub, gc, migrate, serve"),
    ],
)
def test_a_missing_command_is_one_usage_line(args, needle):
    result = hero_cli(*args, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hero: ") and needle in lines[0], result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["agents", "--bogus"], "hero: unrecognized arguments: --bogus"),
        (["user", "list", "--bogus"], "hero: unrecognized arguments: --bogus"),
        (["user", "add"], "hero: user add: the following arguments are required: name"),
    ],
)
def test_parser_errors_carry_the_prefix_once(args, line):
    result = hero_cli(*args, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == line


def test_versions_of_a_missing_key_is_an_error_like_get(tmp_path):
    data = str(tmp_path / "d")
    for command in ("get", "versions"):
        result = hero_cli("storage", command, "nosuchkey", "--data", data, check=False)
        assert result.returncode == 2, command
        assert result.stderr.strip() == "hero: no object 'nosuchkey'", command
        assert result.stdout == "", command


def test_second_node_on_the_same_data_dir_says_who_holds_it(tmp_path):
    data = tmp_path / "data"
    first = NodeProcess(data)
    try:
        result = hero_cli("up", "--data", str(data), "--port", str(free_port()), check=False)
        assert first.proc.poll() is None  # the first node is unharmed
        assert httpx.get(f"{first.url}/healthz").status_code == 200
    finally:
        first.stop()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"hero: data dir {data} is in use by another node: "
        f"pid {first.proc.pid} on {socket.gethostname()}, port {first.port}"
    )
    again = NodeProcess(data)  # the lock went with the first node
    again.stop()


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--profile", "nope"], "hero: unknown hardware profile 'nope'; available: sbc-15w, server-1u-250w, "
                                "zos-edge-60w"),
        (["--model", "/nonexistent.gguf"], "hero: model file not found: /nonexistent.gguf"),
    ],
)
def test_profile_and_model_are_checked_before_the_port(tmp_path, extra, line):
    result = hero_up_on_a_taken_port(tmp_path / "d", *extra)
    assert result.returncode == 2
    assert result.stderr.strip() == line


@pytest.mark.parametrize(
    ("agent", "line"),
    [
        ("agents.assistant", "hero: agent 'agents.assistant': not a factory path (module:function, such as "
                             "'agents.assistant:create')"),
        ("agents.nope:create", "hero: agent 'agents.nope:create': cannot import 'agents.nope': ModuleNotFoundError: "
                               "No module named 'agents.nope'"),
        ("agents.assistant:nope", "hero: agent 'agents.assistant:nope': module 'agents.assistant' has no 'nope'"),
        ("agents.assistant:SYSTEM", "hero: agent 'agents.assistant:SYSTEM': 'SYSTEM' is a str, not a factory "
                                    "(a callable)"),
    ],
)
def test_a_bad_agent_factory_is_one_line_before_the_port(tmp_path, agent, line):
    data = tmp_path / "d"
    data.mkdir()
    (data / "hero.toml").write_text(f"[node]\nagent = {agent!r}\n")
    result = hero_up_on_a_taken_port(data)
    assert result.returncode == 2
    assert result.stderr.strip() == line
