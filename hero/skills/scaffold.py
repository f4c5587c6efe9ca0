"""`hero skill new NAME`: a skill bundle that works and is tested from its first minute."""

from __future__ import annotations

from pathlib import Path

from hero.errors import UsageError
from hero.skills.manifest import NAME

MANIFEST = '''name = "{name}"
version = "0.1.0"
description = "Greets people (a new skill: say what yours does)."
module = "{name}"

[permissions]           # everything not granted here is refused
timers = false
llm = false
storage_kb = 16
agents = []
hosts = []
time_limit_s = 5
'''

MODULE = '''"""{name}: a new Hero skill. Its tools are offered to the agent's model and to the owner's MCP clients;
its command answers /{name}."""

from __future__ import annotations

from hero.skills import SkillContext, command, tool


@tool
async def greet(ctx: SkillContext, name: str) -> str:
    """Greet someone by name.

    Args:
        name: who to greet
    """
    count = ctx.state.get("greeted", 0) + 1
    ctx.state["greeted"] = count  # the skill's own state, kept with the agent
    return f"Hello, {{name}}!"


@command("{name}", usage="/{name} NAME")
async def greet_command(ctx: SkillContext, text: str) -> str:
    return await greet(ctx, text or "you")
'''

TEST = '''"""Run with: hero skill test PATH (no server, no model)."""

import pytest

from hero.skills.testing import local_agent


async def test_the_command_and_the_tool_greet():
    async with local_agent() as agent:
        assert await agent.chat("/{name} Ann") == "Hello, Ann!"
        assert await agent.call("{name}.greet", name="Bob") == "Hello, Bob!"
        assert (await agent.state("{name}"))["greeted"] == 2


async def test_arguments_are_checked_against_the_schema():
    async with local_agent() as agent:
        with pytest.raises(Exception, match="name"):
            await agent.call("{name}.greet", name=42)
'''


def scaffold(name: str, parent: Path) -> Path:
    if not NAME.match(name):
        raise UsageError(f"skill name {name!r}: lowercase letters, digits and _, starting with a letter")
    folder = parent / name
    if folder.exists():
        raise UsageError(f"{folder} already exists")
    (folder / "tests").mkdir(parents=True)
    (folder / "skill.toml").write_text(MANIFEST.format(name=name))
    (folder / f"{name}.py").write_text(MODULE.format(name=name))
    (folder / "tests" / f"test_{name}.py").write_text(TEST.format(name=name))
    return folder
