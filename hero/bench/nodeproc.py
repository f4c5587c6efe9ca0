"""A real node for the benchmark: `hero up` in a subprocess on its own data dir, and its users.

The node is started exactly as an operator starts it (the `hero` command, the real model, QSS,
the governor); the benchmark reaches it only through its HTTP API and, once it has stopped,
through the files it leaves (the DuckDB power history, the QSS backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from hero.identity import NodeKeys, UserKey
from hero.nursery import Nursery
from hero.users import Users

READY_PREFIX = "hero: model "  # the line `hero up` prints once it serves
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BenchUser:
    name: str
    agent_id: str
    token: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_users(data_dir: Path, count: int, *, prefix: str = "bench") -> tuple[list[BenchUser], str]:
    """Register `count` users (keys generated here, as `hero user add` does) and an operator token. Blocking."""
    data_dir.mkdir(parents=True, exist_ok=True)
    users = Users(data_dir, NodeKeys.load_or_create(data_dir))
    try:
        out = []
        existing = {u.name: u for u in users.list()}
        for i in range(count):
            name = f"{prefix}-{i:05d}"
            user = existing.get(name) or users.add(name, UserKey.generate().agent_id)
            token, _ = users.issue(user)
            out.append(BenchUser(name, user.agent_id, token))
        operator, _ = users.issue_operator()
        return out, operator
    finally:
        users.close()


class NodeProcess:
    """`hero up` on `data_dir` and `port`; `env` adds HERO_* settings. Owns its stdout reader task."""

    def __init__(self, data_dir: Path, port: int, *, profile: str, idle_after_s: float | None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.profile = profile
        self.idle_after_s = idle_after_s
        self.env = env or {}
        self.url = f"http://127.0.0.1:{port}"
        self.output: list[str] = []  # everything the node printed (kept for the report)
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self._tasks = Nursery("bench-node")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the node is not running")
        return self.proc.pid

    async def start(self) -> None:
        args = [sys.executable, "-m", "hero.cli", "up", "--data", str(self.data_dir), "--port", str(self.port),
                "--profile", self.profile]
        if self.idle_after_s is not None:
            args += ["--idle-after", f"{self.idle_after_s:g}"]
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", **self.env}
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the bench, which stops the node itself
        )
        ready = asyncio.get_running_loop().create_future()
        self._tasks.spawn(self._read(ready), name="bench-node-output")
        try:
            await asyncio.wait_for(ready, START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    async def _read(self, ready: asyncio.Future[None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if line.startswith(READY_PREFIX) and not ready.done():
                self.ready = True
                ready.set_result(None)
        if not ready.done():
            tail = "\n".join(self.output[-20:])
            ready.set_exception(RuntimeError(f"hero up exited before serving:\n{tail}"))

    async def stop(self) -> int | None:
        """SIGTERM (the node hibernates every agent and flushes its history), then wait; SIGKILL if it hangs."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            # A node still starting has accepted nothing and stops on SIGTERM only once it serves: kill it.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if self.ready else signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await self._tasks.join()
        self.proc = None
        return proc.returncode
