"""`hero storage …` through the real `hero` command, and the dashboard's storage API over HTTP."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import random
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import httpx
import uvicorn

from hero.config import NodeConfig
from hero.identity import NodeKeys, UserKey
from hero.users import Users
from hero.web.app import create_app
from tests.conftest import ROOT, free_port, hero_cli
from tests.store.helpers import AGENT, fragment_files, open_store, storage_parser


def test_put_get_versions_status_scrub_gc(tmp_path: Path):
    data = str(tmp_path / "data")
    blob = tmp_path / "state.json"
    blob.write_bytes(json.dumps({"messages": ["hello"] * 500}).encode())
    first = json.loads(hero_cli("storage", "put", AGENT + "/state", str(blob), "--data", data, "--json").stdout)
    assert (first["version"], first["fragments"], first["expected"]) == (1, 20, 20)
    blob.write_bytes(b"second version")
    hero_cli("storage", "put", AGENT + "/state", str(blob), "--data", data)

    got = subprocess.run([sys.executable, "-m", "hero.cli", "storage", "get", AGENT + "/state", "--version", "1",
                          "--data", data], capture_output=True, cwd=ROOT, timeout=60, check=True)
    assert json.loads(got.stdout) == {"messages": ["hello"] * 500}
    assert hero_cli("storage", "get", AGENT + "/state", "--data", data).stdout == "second version"

    versions = json.loads(hero_cli("storage", "versions", AGENT + "/state", "--data", data, "--json").stdout)
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["size"] == 14

    fragment = fragment_files(tmp_path / "data" / "backends" / "07")[0]
    fragment.write_bytes(b"bit rot")
    scrub = json.loads(hero_cli("storage", "scrub", "--data", data, "--json").stdout)
    assert {k: scrub[k] for k in ("checked", "corrupt", "missing", "repaired")} == {
        "checked": 40, "corrupt": 1, "missing": 0, "repaired": 1,
    }

    status = json.loads(hero_cli("storage", "status", "--data", data, "--json").stdout)
    assert len(status["backends"]) == 20 and status["up"] == 20
    assert {b["location"] for b in status["backends"]} == {"local"}
    assert sum(b["fragments"] for b in status["backends"]) == 40
    assert status["scrub"]["last"]["repaired"] == 1 and status["repairs"]["repaired_total"] >= 1
    assert status["node_id"] == NodeKeys.load_or_create(tmp_path / "data").node_id

    gc = json.loads(hero_cli("storage", "gc", "--keep", "1", "--data", data, "--json").stdout)
    assert gc["versions_removed"] == 1
    assert json.loads(hero_cli("storage", "keys", "--data", data, "--json").stdout) == [AGENT + "/state"]


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path):
    data = str(tmp_path / "data")
    cases = [
        (["storage", "get", "agent/none/state", "--data", data], "no object"),
        (["storage", "get", "x", "--version", "0", "--data", data], "version must be >= 1"),
        (["storage", "put", "k", str(tmp_path / "missing"), "--data", data], "cannot read"),
        (["storage", "put", "../bad", "-", "--data", data], "invalid store key"),
        (["storage", "gc", "--keep", "0", "--data", data], "--keep must be >= 1"),
        (["storage", "serve", "--dir", data, "--port", "1", "--location", "x"], "no trusted nodes"),
    ]
    for args, message in cases:
        result = hero_cli(*args, check=False, input="")
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("hero: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_parser_shapes():
    parser = storage_parser()
    args = parser.parse_args(["storage", "get", "k", "--version", "3", "--data", "d"])
    assert (args.key, args.version, str(args.data), args.func.__name__) == ("k", 3, "d", "cmd_get")
    args = parser.parse_args(["storage", "serve", "--dir", "x", "--port", "9", "--location", "a", "--trust", "b"])
    assert args.trust == ["b"] and args.host == "127.0.0.1"
    assert str(parser.parse_args(["storage", "status"]).data) == "hero-data"


def test_serve_runs_a_fragment_server_the_node_can_use(tmp_path: Path):
    data = tmp_path / "data"
    node = NodeKeys.load_or_create(data)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hero.cli", "storage", "serve", "--dir", str(tmp_path / "frag"), "--port", str(port),
         "--location", "site-b", "--trust", node.node_id, "--no-fsync"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.stderr else ""
            time.sleep(0.05)
        (data / "storage.toml").write_text(
            f'k = 2\nm = 1\nlocal_backends = 2\n[[backend]]\nurl = "http://127.0.0.1:{port}"\nlocation = "site-b"\n'
        )
        (tmp_path / "in").write_bytes(b"via the fragment server")
        hero_cli("storage", "put", "node/x", str(tmp_path / "in"), "--data", str(data))
        assert hero_cli("storage", "get", "node/x", "--data", str(data)).stdout == "via the fragment server"
        status = json.loads(hero_cli("storage", "status", "--data", str(data), "--json").stdout)
        remote = [b for b in status["backends"] if b["kind"] == "remote"]
        assert len(remote) == 1 and remote[0]["state"] == "up" and remote[0]["fragments"] == 1
        assert remote[0]["location"] == "site-b"
        assert len(fragment_files(tmp_path / "frag")) == 1
    finally:
        server.terminate()
        server.wait(10)


async def test_storage_api_is_for_the_operator_only(tmp_path: Path):
    data = tmp_path / "data"
    keys = NodeKeys.load_or_create(data)
    users = Users(data, keys)
    store = await open_store(data)
    port = free_port()
    try:
        await store.put(AGENT + "/state", b"x", epoch=1)
        user = users.add("alice", UserKey.generate().agent_id)
        user_token, _ = users.issue(user)
        operator_token, _ = users.issue_operator()
        app = create_app(config=NodeConfig(data_dir=data), node=None, chat=None, users=users, llm=None, store=store)
        sock = socket.create_server(("127.0.0.1", port))  # listening now: requests queue until uvicorn accepts
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
                assert (await client.get("/api/node/storage")).status_code == 401
                forbidden = await client.get("/api/node/storage", headers={"Authorization": f"Bearer {user_token}"})
                assert forbidden.status_code == 403
                ok = await client.get("/api/node/storage", headers={"Authorization": f"Bearer {operator_token}"})
                assert ok.status_code == 200
                body = ok.json()
                assert body["store"] == "qss" and len(body["backends"]) == 20 and body["up"] == 20
                assert {"name", "location", "state", "fragments"} <= set(body["backends"][0])
                assert {"scrub", "repairs", "k", "m"} <= set(body)
        finally:
            server.should_exit = True
            await task
    finally:
        await store.aclose()
        users.close()


def test_a_put_on_a_terminal_shows_its_progress_and_one_into_a_pipe_shows_none(tmp_path: Path):
    data = str(tmp_path / "data")
    blob = tmp_path / "blob"
    blob.write_bytes(random.randbytes(3 << 20))
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns, as a real one has
    proc = subprocess.Popen([sys.executable, "-m", "hero.cli", "storage", "put", AGENT + "/state", str(blob),
                             "--data", data], stdout=terminal, stderr=terminal, cwd=ROOT)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert proc.wait(60) == 0
    text = shown.decode(errors="replace")
    assert "put" in text and "100%" in text and "3.15M/3.15M" in text and "MB/s" in text, text  # bytes of the total
    assert "version 1" in text

    piped = hero_cli("storage", "put", AGENT + "/state", str(blob), "--data", data)
    assert piped.stderr == "" and "version 2" in piped.stdout
