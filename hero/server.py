"""The composition root: build a node's parts from its config, run them, close them in order.

This is the only module that knows every part; each part only knows its seams.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import re
import resource
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from hero.chat.histories import Histories
from hero.cluster.key import shared_keys
from hero.config import NodeConfig
from hero.errors import Conflict, UsageError
from hero.identity import NodeKeys, UserKey
from hero.net.agents import AgentBridge, AllowList
from hero.net.embed import start_overlay
from hero.nodelock import NodeLock
from hero.power.profiles import load_profile
from hero.power.service import PowerService
from hero.runtime.agent import AgentFactory
from hero.runtime.directory import Directory
from hero.runtime.factory import load_factory
from hero.runtime.node import Node
from hero.scheduler.llm import LLMService
from hero.scheduler.model import check_model_path, default_model_path
from hero.seams.directory import LeaseDirectory
from hero.skills.host import node_host
from hero.store.qss import QSS, open_qss
from hero.users import Registry
from hero.users_data import UserData
from hero.web.app import create_app
from hero.web.parts import app_parts

log = logging.getLogger("hero")


@dataclass
class Parts:
    config: NodeConfig
    keys: NodeKeys  # the node's own (its node id, its overlay key)
    users: Registry
    store: QSS
    llm: LLMService
    node: Node
    chat: Histories
    power: PowerService
    app: Starlette
    overlay: Any = None  # hero.net's Overlay (its own node, or a Mycelium daemon's) when one runs


async def open_store(config: NodeConfig, keys: NodeKeys) -> QSS:
    """The node's QSS (its background scrubber is started by `open_node`, never by one-shot commands)."""
    return await open_qss(config.data_dir, keys)


@asynccontextmanager
async def open_node(config: NodeConfig, *, agent_factory: AgentFactory | None = None,
                    directory: LeaseDirectory | None = None) -> AsyncIterator[Parts]:
    """The node's parts, started; closed in order on exit. Agents come from `agent_factory`, else the config's.
    With a cluster's `directory` (hero.cluster.host) the node is a member of that cluster."""
    agent_factory = agent_factory or load_factory(config.agent)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    model = check_model_path(config.model) if config.model else default_model_path()
    keys = NodeKeys.load_or_create(config.data_dir)
    shared = shared_keys(keys, config.cluster_key)  # the cluster's, in a cluster: store, tokens, specs
    power = PowerService(
        config.profile,
        config.data_dir,
        replace(config.power, host_speed=config.host_speed, cpu_parts_hz=config.cpu_parts_hz),
    )
    store = await open_store(config, shared)
    users = Registry(store, shared, data_dir=config.data_dir)
    llm = LLMService(
        model,
        n_ctx=config.n_ctx,
        threads=config.llm_threads,
        max_tokens=config.max_tokens,
        parallel=config.llm_parallel,
        queue_max=config.llm_queue_max,
        metering=power,
    )
    skills = node_host(config, shared, store, power)  # the skills agents run, their specs, what skills may use
    # overlay messages become agent events and agents send through it; the overlay itself starts last
    allow = AllowList(config.data_dir / "overlay-allow.json")
    bridge = AgentBridge(allow, is_local=lambda agent_id: _hosts(users, agent_id), grant_of=users.grant_of)
    node = Node(
        store,
        llm,
        agent_factory,
        node_id=keys.node_id,
        idle_after_s=config.idle_after_s,
        directory=directory or Directory(ttl_s=config.lease_ttl_s),
        member=directory is not None,
        metering=power,
        admission=power,
        messenger=bridge,
        services={"skills": skills},
        verifier=skills,  # no agent is activated unless its spec verifies
    )
    chat = Histories(node)
    power.attach(node, llm)
    data = UserData(users, store, node, power)
    app = create_app(config=config, node=node, chat=chat, users=users, llm=llm, store=store, power=power, data=data)
    overlay = None
    try:
        await store.start()
        await users.load()
        await llm.start()
        await node.start()
        await power.start()
        agents = [u.agent_id for u in users.list() if not u.revoked]
        overlay = await start_overlay(config, keys, bridge, node.deliver, agents, authority=shared.signing)
        app_parts(app).overlay = overlay
        yield Parts(config, keys, users, store, llm, node, chat, power, app, overlay)
    finally:
        if overlay is not None:
            await overlay.aclose()
        await bridge.aclose()
        await power.aclose()  # first, so the governor does not hibernate or unload mid-shutdown
        await app.state.mcp.aclose()
        await node.aclose()
        await skills.aclose()
        await llm.aclose()
        await users.aclose()
        await store.aclose()


def _hosts(users: Registry, agent_id: str) -> bool:
    """Whether this node hosts `agent_id`: its user exists and is not revoked (asked each time, so users added
    with `hero user add` while the node runs are reachable at once)."""
    user = users.by_agent(agent_id)
    return user is not None and not user.revoked


async def first_start(parts: Parts, base_url: str) -> list[str]:
    """On an empty node (or cluster): create the owner's user and key, and say how to sign in (as Jupyter does)."""
    if parts.users.list():
        return []
    name = re.sub(r"[^a-z0-9_.-]", "", getpass.getuser().lower()) or "owner"
    key = UserKey.generate()
    try:
        user = await parts.users.add_user(name, key.agent_id, key=key)
    except Conflict:  # another node of the cluster made the first user at the same moment
        return []
    key_file = parts.config.data_dir / f"{name}.user.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.secret_hex + "\n")
    token, _ = parts.users.issue(user)
    operator, _ = parts.users.issue_operator()
    return [
        f"First start: created user {name!r} (agent {user.agent_id[:16]}…); their secret key is in {key_file}.",
        f"    Chat:      {base_url}/?token={token}",
        f"    Dashboard: {base_url}/dashboard?token={operator}",
        "Add more users with: hero user add NAME --data " + str(parts.config.data_dir),
    ]


def listen(host: str, port: int) -> socket.socket:
    """Bind before anything slow starts, so a busy port is a one-line error, not a late crash."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ShutdownSignals:
    """What SIGINT/SIGTERM do at each moment of the node's life.

    While the parts start, the first signal cancels the start-up (what has started
    is closed in order). Once the web server runs, uvicorn holds the signals and
    turns the first into a graceful stop; a signal in the moment between the two
    stops the server as uvicorn would. After serving, uvicorn re-raises the signal:
    it is only noted here, so the process lives until its agents have hibernated.
    A second Ctrl-C still interrupts an impatient shutdown.
    """

    def __init__(self, starting: asyncio.Task[Any]) -> None:
        self.received: list[int] = []
        self.start_cancelled = False
        self.task = starting
        self._starting: asyncio.Task[Any] | None = starting
        self._loop = asyncio.get_running_loop()
        self._server: uvicorn.Server | None = None

    def serving(self, server: uvicorn.Server) -> None:
        """Start-up is over: from now on a signal stops `server` instead of cancelling the start."""
        self._starting = None
        self._server = server
        if self.received:
            server.should_exit = True

    def note(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self._starting is not None:
            self._loop.call_soon_threadsafe(self._cancel_start)  # wakes the loop; runs in its turn
        elif self._server is not None:
            self._server.should_exit = True
        if len(self.received) > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt

    def _cancel_start(self) -> None:
        if self._starting is not None and not self.start_cancelled:  # not if start-up ended meanwhile
            self.start_cancelled = True
            self._starting.cancel()


@contextmanager
def shutdown_signals() -> Iterator[ShutdownSignals]:
    """Handle SIGINT/SIGTERM as `ShutdownSignals` says (the default handlers would kill the process before the
    node has written its agents' state); the caller's task is the start-up a signal cancels."""
    task = asyncio.current_task()
    assert task is not None, "shutdown_signals runs in a task"
    signals = ShutdownSignals(task)
    previous = {sig: signal.signal(sig, signals.note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_file_limit() -> None:
    """Lift the soft open-files limit to the hard one: a node holds sockets for its users and, per
    storage backend, its pack files (the common soft default of 1,024 is low for a server)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def check_config(config: NodeConfig) -> None:
    """Refuse a bad profile, model path or agent factory before the port is bound, so a busy port cannot hide them."""
    load_profile(config.profile)
    load_factory(config.agent)
    if config.model:
        check_model_path(config.model)
    else:
        default_model_path()


async def serve(config: NodeConfig, *, announce: Any = print) -> None:
    """Run the node until Ctrl-C or SIGTERM, then hibernate every agent and close cleanly.

    Order: settings, then the data dir's lock (one node per dir), then the port, then the parts.
    """
    raise_file_limit()
    check_config(config)
    with NodeLock.acquire(config.data_dir, port=config.port):
        with shutdown_signals() as signals:  # before the port: once it is bound, a signal must find its handler
            sock = listen(config.host, config.port)
            try:
                await _serve(config, sock, announce, signals)
            except asyncio.CancelledError:
                if not signals.start_cancelled:
                    raise
                signals.task.uncancel()
                announce("hero: stopped during start-up")
            finally:
                sock.close()


async def _serve(config: NodeConfig, sock: socket.socket, announce: Any, signals: ShutdownSignals) -> None:
    async with open_node(config) as parts:
        base_url = f"http://{config.host}:{config.port}"
        for line in await first_start(parts, base_url):
            announce(line)
        model_name = Path(parts.llm.model_path).name
        announce(
            f"hero: model {model_name} · profile {config.profile} · data {config.data_dir} · "
            f"{base_url} · idle_after_s {config.idle_after_s:g}"
        )
        sockets = [sock]
        overlay_sock = overlay_listener(parts.overlay, config)
        if overlay_sock is not None:
            sockets.append(overlay_sock)
            announce(f"hero: also on the overlay at http://[{overlay_sock.getsockname()[0]}]:{config.port}")
        server = uvicorn.Server(
            uvicorn.Config(parts.app, host=config.host, port=config.port, log_level="warning", lifespan="off")
        )
        signals.serving(server)
        await server.serve(sockets=sockets)
        announce("hero: stopping; hibernating agents")


def overlay_listener(overlay: Any, config: NodeConfig) -> socket.socket | None:
    """The web app on the node's overlay address too (where a TUN holds it), so overlay peers reach it while
    `--host` stays loopback; None when there is no such address here, or `--host ::` already covers it."""
    address = overlay.l3_address() if overlay is not None else None
    if address is None or config.host == "::":
        return None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, config.port))
    except OSError as exc:
        log.warning("the web app is not on the overlay address %s: %s", address, exc.strerror or exc)
        return None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
