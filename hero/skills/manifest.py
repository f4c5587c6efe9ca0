"""A skill's manifest (`skill.toml`): what it is and what it may do, read without running any of its code.

```toml
name = "notes"                # lowercase, digits, underscores; names its tools (notes.search)
version = "1.0.0"
description = "Remember things and find them again."
module = "notes"              # the Python module (notes.py) or package (notes/) in the bundle

[permissions]                 # everything is refused unless granted here
timers = true                 # set and cancel durable timers
llm = false                   # ask the node's model
storage_kb = 256              # the most its state slot may hold (JSON)
agents = []                   # agent ids it may message; ["*"] for any
hosts = []                    # outbound hosts ("example.org", "example.org:8443"); none by default
time_limit_s = 5              # each tool call or handler
```
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hero.errors import SkillRefused

MANIFEST = "skill.toml"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
VERSION = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST = re.compile(r"^(\*\.)?[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
AGENT = re.compile(r"^[0-9a-f]{64}$")
MAX_TIME_LIMIT_S = 120.0
MAX_STORAGE_KB = 16 * 1024
KEYS = ("name", "version", "description", "module", "permissions")


@dataclass(frozen=True)
class Permissions:
    timers: bool = False
    llm: bool = False
    storage_kb: int = 64
    agents: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    time_limit_s: float = 5.0

    @property
    def storage_bytes(self) -> int:
        return self.storage_kb * 1024

    def may_message(self, agent_id: str) -> bool:
        return "*" in self.agents or agent_id in self.agents

    def may_reach(self, host: str, port: int | None) -> bool:
        """Whether `host` (and `port`, if the grant names one) is granted; `*.example.org` covers its subdomains."""
        host = host.lower().strip("[]")
        for grant in self.hosts:
            name, grant_port = split_host(grant.lower())
            if grant_port is not None and grant_port != port:
                continue
            if name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False

    def describe(self) -> list[str]:
        """The grants in words, for /help and `hero skill list`."""
        out = []
        if self.timers:
            out.append("timers")
        if self.llm:
            out.append("llm")
        out.append(f"storage {self.storage_kb} KB")
        if self.agents:
            out.append("message " + ("any agent" if "*" in self.agents else f"{len(self.agents)} agents"))
        if self.hosts:
            out.append("reach " + ", ".join(self.hosts))
        out.append(f"{self.time_limit_s:g} s per call")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"timers": self.timers, "llm": self.llm, "storage_kb": self.storage_kb, "agents": list(self.agents),
                "hosts": list(self.hosts), "time_limit_s": self.time_limit_s}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    module: str
    permissions: Permissions = field(default_factory=Permissions)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description, "module": self.module,
                "permissions": self.permissions.to_json()}


def split_host(grant: str) -> tuple[str, int | None]:
    """`host[:port]` or `[v6]:port` as (host, port or None)."""
    if grant.startswith("["):
        name, _, rest = grant[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, colon, port = grant.rpartition(":")
    return (name, int(port)) if colon and port.isdigit() else (grant, None)


def load_manifest(folder: Path) -> Manifest:
    """The manifest of the bundle in `folder`; `SkillRefused` naming the file and the fault if it is not valid."""
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkillRefused(f"{folder}: no {MANIFEST}: a skill bundle needs a manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SkillRefused(f"{path}: cannot be read: {exc}") from None
    return parse_manifest(text, where=str(path))


def parse_manifest(text: str, *, where: str = MANIFEST) -> Manifest:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SkillRefused(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise SkillRefused(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    name = _text(raw, "name", where, required=True)
    if not NAME.match(name):
        raise SkillRefused(f"{where}: name {name!r} must be lowercase letters, digits and _ (at most 32), "
                           "starting with a letter")
    version = _text(raw, "version", where, required=True)
    if not VERSION.match(version):
        raise SkillRefused(f"{where}: version {version!r} is not MAJOR.MINOR.PATCH")
    module = _text(raw, "module", where) or name
    if not MODULE.match(module):
        raise SkillRefused(f"{where}: module {module!r} is not a Python module name")
    permissions = raw.get("permissions", {})
    if not isinstance(permissions, dict):
        raise SkillRefused(f"{where}: [permissions] must be a table")
    return Manifest(name, version, _text(raw, "description", where), module, parse_permissions(permissions, where))


def parse_permissions(raw: dict[str, Any], where: str) -> Permissions:
    known = {f for f in Permissions.__dataclass_fields__}
    for key in raw:
        if key not in known:
            raise SkillRefused(f"{where}: unknown permission {key!r} (known: {', '.join(sorted(known))})")
    p = Permissions()
    timers = raw.get("timers", p.timers)
    llm = raw.get("llm", p.llm)
    for key, value in (("timers", timers), ("llm", llm)):
        if not isinstance(value, bool):
            raise SkillRefused(f"{where}: permission {key} must be true or false, not {value!r}")
    storage_kb = raw.get("storage_kb", p.storage_kb)
    if isinstance(storage_kb, bool) or not isinstance(storage_kb, int) or not 0 <= storage_kb <= MAX_STORAGE_KB:
        raise SkillRefused(f"{where}: permission storage_kb must be an integer from 0 to {MAX_STORAGE_KB}")
    limit = raw.get("time_limit_s", p.time_limit_s)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= MAX_TIME_LIMIT_S:
        raise SkillRefused(f"{where}: permission time_limit_s must be a number of seconds, over 0 and at most "
                           f"{MAX_TIME_LIMIT_S:g}")
    agents = _strings(raw, "agents", where)
    for agent in agents:
        if agent != "*" and not AGENT.match(agent):
            raise SkillRefused(f"{where}: permission agents: {agent!r} is not an agent id (64 hex digits) or '*'")
    hosts = _strings(raw, "hosts", where)
    for host in hosts:
        port = split_host(host)[1] if HOST.match(host) else 0
        if port is not None and not 0 < port < 65536:
            raise SkillRefused(f"{where}: permission hosts: {host!r} is not a host name (optionally :port)")
    return Permissions(timers, llm, storage_kb, tuple(agents), tuple(hosts), float(limit))


def _text(raw: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise SkillRefused(f"{where}: missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise SkillRefused(f"{where}: {key} must be a string, not {type(value).__name__}")
    return value


def _strings(raw: dict[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SkillRefused(f"{where}: permission {key} must be a list of strings")
    return list(value)
