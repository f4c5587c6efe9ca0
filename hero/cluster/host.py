"""A node on Ray: one host actor per node runs the whole node (its runtime with all its agents, its model,
its store, its web API), never one actor per agent.

`hero up --ray ADDRESS` joins the cluster (Ray's token authentication, the token derived from the
cluster key), then asks Ray for one actor on this machine (`node:<ip>`), with the power budget of
the node's hardware profile as its `hero_watts`, and its profile, when this machine's Ray nodes offer them
(`hero.cluster.resources`). The
actor opens the node on its data dir, joins the cluster directory and serves the web API on
`--port`, behind the gateway. The `hero up` process stays as its owner: Ctrl-C or SIGTERM stops the
node cleanly (agents hibernate, leases go back, timers go to other nodes); if either process dies,
Ray ends the other, and the node's leases lapse so its agents wake elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from hero.config import NodeConfig
from hero.errors import HeroError, UsageError
from hero.identity import NodeKeys

log = logging.getLogger("hero.cluster")
START_TIMEOUT_S = 180.0  # the first start compiles nothing, but loads the model and reads the registry
# Ray's per-worker background work a node does without: its metrics (Hero exports its own), event-loop
# statistics, and task events reported every second (a host actor runs few, long tasks). Measured in
# bench/cluster_bench.py (c); HERO_RAY_QUIET=0 starts the host actor with Ray's defaults.
QUIET_ENV = {"RAY_enable_metrics_collection": "0", "RAY_event_stats": "0",
             "RAY_task_events_report_interval_ms": "10000", "RAY_metrics_report_interval_ms": "60000"}


class HostActor:
    """The actor (`ray.remote` is applied when it is created, so this module imports no Ray)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._stack = AsyncExitStack()
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._parts: Any = None

    async def start(self) -> list[str]:
        """Open the node and serve it; the lines `hero up` prints."""
        import uvicorn

        from hero.cluster.key import ClusterKey
        from hero.cluster.link import ClusterLink, node_identity
        from hero.nodelock import NodeLock
        from hero.runtime.ray_directory import RayDirectory
        from hero.server import check_config, first_start, listen, open_node, raise_file_limit

        config = self.config
        _serve_at_normal_priority()
        raise_file_limit()
        check_config(config)
        self._stack.enter_context(NodeLock.acquire(config.data_dir, port=config.port))
        sock = listen(config.host, config.port)
        key = ClusterKey.load(config.cluster_key)
        directory = RayDirectory.connect(key.cluster_id, ttl_s=config.lease_ttl_s)
        identity = node_identity(config)  # the join (the runtime's first renewal) says where and who this node is;
        directory.info = lambda: dict(identity)  # the link's full heartbeat replaces it once the node is wired
        parts = self._parts = await self._stack.enter_async_context(open_node(config, directory=directory))
        link = ClusterLink(config, directory, parts)
        app = link.attach()
        self._stack.push_async_callback(link.aclose)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._serving = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        lines = await first_start(parts, link.url)
        lines.append(f"hero: node {parts.node.node_id[:16]}… of cluster {key.cluster_id[:16]}… · data "
                     f"{config.data_dir} · {link.url} · lease_ttl_s {config.lease_ttl_s:g} · pid {os.getpid()}")
        return lines

    async def stop(self) -> None:
        """Stop serving, then close the node: agents hibernate, leases go back, timers go to other nodes."""
        try:
            if self._server is not None and self._serving is not None:
                self._server.should_exit = True
                await self._serving
            await self._stack.aclose()
        finally:
            self._stopped.set()

    async def wait(self) -> None:
        """Returns when the node has stopped."""
        await self._stopped.wait()

    async def ping(self) -> int:
        return os.getpid()

    async def registry_changed(self, subject: str) -> None:
        """Another node changed the user registry: read `subject` again (the cluster's broadcast)."""
        if self._parts is not None:
            await self._parts.users.refresh(subject)


def _serve_at_normal_priority() -> None:
    """Ray starts its workers at nice 15; a node serving people runs at the priority a lone `hero up` has, so a
    busy machine's batch work does not slow its answers (threads started later inherit it)."""
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [str(os.getpid())]:
        try:
            if os.getpriority(os.PRIO_PROCESS, int(tid)) > 0:
                os.setpriority(os.PRIO_PROCESS, int(tid), 0)
        except PermissionError:
            log.warning("the node runs at Ray's worker priority (nice 15): start Ray with RAY_worker_niceness=0 "
                        "or give the node CAP_SYS_NICE")
            return
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def serve_on_ray(config: NodeConfig, *, announce: Callable[[str], None]) -> None:
    """`hero up --ray`: run this node as a host actor of the cluster until Ctrl-C or SIGTERM."""
    import ray

    from hero.cluster.connect import connect
    from hero.cluster.key import ClusterKey
    from hero.cluster.resources import actor_resources
    from hero.power.profiles import load_profile
    from hero.runtime.ray_directory import NAMESPACE, host_name
    from hero.server import check_config

    check_config(config)
    key = ClusterKey.load(config.cluster_key)
    config = replace(config, data_dir=Path(config.data_dir).resolve())
    node_id = NodeKeys.load_or_create(config.data_dir).node_id
    connect(config.ray, key, log_to_driver=True)
    resources = actor_resources(load_profile(config.profile), ray.util.get_node_ip_address(), ray.nodes())
    actor: Any = ray.remote(HostActor)
    host = actor.options(
        name=host_name(node_id), namespace=NAMESPACE, num_cpus=0, max_concurrency=1000, max_restarts=0,
        resources=resources, runtime_env={"env_vars": QUIET_ENV} if os.environ.get("HERO_RAY_QUIET") != "0" else None,
    ).remote(config)
    try:
        asyncio.run(_run(host, announce))
    finally:
        with contextlib.suppress(Exception):
            ray.kill(host)
        ray.shutdown()


async def _run(host: Any, announce: Callable[[str], None]) -> None:
    import ray

    try:
        lines = await asyncio.wait_for(_cause(host.start.remote()), START_TIMEOUT_S)
    except TimeoutError:
        raise UsageError(f"the node's host actor did not start within {START_TIMEOUT_S:.0f}s: does a Ray node on "
                         "this machine have room (hero_watts)? see hero cluster status") from None
    for line in lines:
        announce(line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ended = asyncio.ensure_future(_cause(host.wait.remote()))
    asked = asyncio.ensure_future(stop.wait())
    await asyncio.wait([ended, asked], return_when=asyncio.FIRST_COMPLETED)
    if ended.done():
        asked.cancel()
        error = ended.exception()
        raise UsageError(f"the node's host actor ended: {error}" if error else "the node stopped") from None
    announce("hero: stopping; hibernating agents")
    try:
        await _cause(host.stop.remote())
    except (ray.exceptions.RayError, HeroError) as exc:
        log.warning("the node did not stop cleanly: %s", exc)
    ended.cancel()


async def _cause(ref: Any) -> Any:
    """The result of an actor call; the actor's own error (a HeroError) when it raised one."""
    import ray

    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, HeroError):
            raise cause from None
        raise UsageError(f"the node's host actor failed: {cause or exc}") from None
    except ray.exceptions.RayActorError as exc:
        raise UsageError(f"the node's host actor died: {str(exc).splitlines()[0]}") from None
