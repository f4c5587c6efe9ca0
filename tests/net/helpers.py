"""Real overlay nodes as separate `hero net up` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hero.errors import HeroError
from hero.net.address import load_or_create_key
from hero.runtime.agent import Agent
from hero.runtime.events import ChatMessage, Event, OverlayMessage, Reply
from hero.runtime.node import Node
from tests.conftest import ROOT, free_port


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    api: str
    public: str
    address: str

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.api + path, timeout=30, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> httpx.Response:
        return httpx.post(self.api + path, timeout=30, **kw)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_node(tmp: Path, name: str, peers: list[int], *, port: int | None = None, extra: tuple[str, ...] = (),
               prefix: tuple[str, ...] = ()) -> Proc:
    port = port or free_port()
    api_port = free_port()
    key = tmp / f"{name}.key"
    identity = load_or_create_key(key)
    args = [*prefix, sys.executable, "-m", "hero.cli", "net", "up", "--key-file", str(key), "--tcp-listen-port",
            str(port), "--api-addr", f"127.0.0.1:{api_port}", "--no-tun", *extra]
    if peers:
        args += ["--peers", *(f"tcp://127.0.0.1:{p}" for p in peers)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "NO_PROXY": "*"})
    return Proc(name, proc, port, f"http://127.0.0.1:{api_port}", identity.public.hex(), str(identity.address))


def wait_api(node: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise AssertionError(f"{node.name} exited: {node.proc.stderr.read().decode() if node.proc.stderr else ''}")
        try:
            if node.get("/api/v1/admin").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{node.name} API did not come up")


def wait_routes(node: Proc, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(node.get("/api/v1/admin/routes/selected").json()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node.name} has {node.get('/api/v1/admin/routes/selected').json()} routes")


class Courier(Agent):
    """A test agent. A chat message `{"to", "agent"?, "text", "wait"?}` (JSON) is sent over the overlay and the
    answer written back; an overlay message is answered with who got what from which agent."""

    async def handle(self, event: Event, reply: Reply) -> None:
        reply.accept()  # it keeps nothing, so accepting at once is honest
        if isinstance(event, OverlayMessage):
            if not event.reply:
                reply.write(f"{self.ctx.agent_id[:8]} got {event.text!r} from {(event.src_agent or 'a node')[:8]}")
        elif isinstance(event, ChatMessage):
            ask = json.loads(event.text)
            try:
                answer = await self.ctx.send(ask["to"], ask["text"], agent=ask.get("agent"), wait_s=ask["wait"])
            except HeroError as exc:
                reply.write(f"error: {exc.message}")
                return
            reply.write(answer.text if answer is not None else "no answer")


async def ask(node: Node, agent_id: str, to: str, text: str, agent: str | None = None, wait_s: float = 10) -> str:
    """Have the Courier `agent_id` on `node` send `text` to `to` (and `agent` there); what it answers."""
    body = json.dumps({"to": to, "agent": agent, "text": text, "wait": wait_s})
    return await (await node.deliver(agent_id, ChatMessage(body))).text()
