"""Joining a Ray cluster, always with Ray's token authentication, the token derived from the cluster key.

Ray 2.60 refuses a process whose token does not match the cluster's (`RAY_AUTH_MODE=token`,
`RAY_AUTH_TOKEN`). Hero never runs or joins a cluster without it: `hero cluster ray-start` starts Ray
with the token, and `hero up --ray` / `hero cluster status --ray` connect with it, so only holders of
the cluster key can run code on the cluster. Ray is imported here, and only when an address is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping

from hero.cluster.key import ClusterKey
from hero.errors import UsageError

NAMESPACE = "hero"
PROBE_S = 5.0


def auth_env(key: ClusterKey) -> dict[str, str]:
    """The environment that makes Ray (its CLI, its processes, a driver) authenticate with the cluster's token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": key.ray_token}


def connect(address: str, key: ClusterKey, *, env: Mapping[str, str] | None = None,
            log_to_driver: bool = False) -> None:
    """Connect this process to the Ray cluster at `address` (HOST:PORT of its head) as a driver.

    A wrong address, a cluster that is down, or a cluster with another token is a UsageError naming it.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray must be the Ray head's HOST:PORT, got {address!r}")
    try:  # Ray itself retries an unreachable address for minutes: ask first
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    os.environ.update(auth_env(key))
    os.environ.update(env or {})
    try:
        import ray
    except ImportError:
        raise UsageError("Ray is not installed: pip install 'hero[cluster]' (or ray>=2.60)") from None

    if ray.is_initialized():
        return
    try:
        with _quiet_stderr():  # Ray's C++ client logs each retry of a refused join: our error says it once
            ray.init(
                address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=log_to_driver,
                configure_logging=False,
            )
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        detail = re.split(r"\.(?:\s|$)", str(exc).strip())[0].strip() or type(exc).__name__  # its first sentence
        raise UsageError(
            f"cannot join the Ray cluster at {address}: {detail} (is it running, and started with this cluster "
            "key's token? see hero cluster ray-start)"
        ) from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 goes nowhere while the block runs (native code writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
