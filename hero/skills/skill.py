"""A loaded skill: its manifest, where it came from, and its tools and handlers collected from its module.

A bundle's module is imported under a package of its own (`hero_skill_<name>_<hash>`),
whose path is the bundle folder, so two versions of a skill (a dev reload) never
share module objects and a skill's relative imports stay inside its bundle.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from hero.errors import SkillRefused
from hero.skills.manifest import Manifest
from hero.skills.sdk import marks
from hero.skills.tools import Tool, make_tool

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    fn: Handler


@dataclass
class Skill:
    manifest: Manifest
    source: str  # "shipped", "entry point", "folder", "dev"
    folder: Path | None
    hash: str
    key: str | None  # who signed it (None: a dev skill, unsigned)
    tools: dict[str, Tool] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    messages: list[Handler] = field(default_factory=list)
    timers: list[Handler] = field(default_factory=list)
    overlay: dict[str, Handler] = field(default_factory=dict)
    prompts: list[Handler] = field(default_factory=list)
    module: ModuleType | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def describe(self) -> dict[str, Any]:
        return {
            **self.manifest.to_json(),
            "source": self.source,
            "folder": str(self.folder) if self.folder else None,
            "hash": self.hash,
            "key": self.key,
            "tools": [tool.describe() for tool in self.tools.values()],
            "commands": [c.usage for c in self.commands.values()],
        }


def import_bundle(folder: Path, manifest: Manifest, digest: str) -> ModuleType:
    """Import the bundle's module under a package of its own; `SkillRefused` if it fails to import."""
    package = f"hero_skill_{manifest.name}_{digest[:12]}"
    if package not in sys.modules:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(f"{package}.{manifest.module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{package}.{manifest.module}":
            raise SkillRefused(f"skill {manifest.name}: no module {manifest.module!r} in {folder} "
                               f"({manifest.module}.py or {manifest.module}/)") from None
        raise SkillRefused(f"skill {manifest.name}: its module failed to import: {_line(exc)}") from None
    except Exception as exc:  # a skill's own code fails as it loads: refuse it, say why
        raise SkillRefused(f"skill {manifest.name}: its module failed to import: {_line(exc)}") from None


def collect(skill: Skill, module: ModuleType) -> Skill:
    """Fill `skill` with the tools and handlers `module` defines; `SkillRefused` for one that cannot be offered."""
    name = skill.name
    for mark, fn in marks(module):
        if mark.kind == "tool":
            if mark.name in skill.tools:
                raise SkillRefused(f"skill {name}: two tools named {mark.name!r}")
            skill.tools[mark.name] = make_tool(name, mark.name, fn, mark.description)
        elif mark.kind == "command":
            if mark.name in skill.commands:
                raise SkillRefused(f"skill {name}: two commands named /{mark.name}")
            skill.commands[mark.name] = Command(mark.name, mark.usage, fn)
        elif mark.kind == "message":
            skill.messages.append(fn)
        elif mark.kind == "timer":
            skill.timers.append(fn)
        elif mark.kind == "overlay":
            skill.overlay[mark.name] = fn
        elif mark.kind == "prompt":
            skill.prompts.append(fn)
    skill.module = module
    return skill


def _line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())
