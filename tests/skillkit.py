"""Helpers for the skill tests: write a small skill bundle to disk."""

from __future__ import annotations

import textwrap
from pathlib import Path

from hero.skills.manifest import MANIFEST


def write_skill(parent: Path, name: str, code: str, permissions: str = "", *, version: str = "1.0.0") -> Path:
    folder = parent / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(
        f'name = "{name}"\nversion = "{version}"\ndescription = "test skill {name}"\nmodule = "{name}"\n'
        f"[permissions]\n{textwrap.dedent(permissions)}"
    )
    (folder / f"{name}.py").write_text(
        "from hero.skills import SkillContext, command, on_message, on_timer, tool\n" + textwrap.dedent(code)
    )
    return folder
