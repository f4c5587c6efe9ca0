"""The skill SDK: what skill developers import. See docs/skills.md.

A skill is a folder (a bundle) with a manifest (`skill.toml`: name, version,
permissions) and a Python module whose decorated functions are its tools and
handlers; it is signed by its developer and loaded only by nodes that trust them.
"""

from hero.skills.context import FetchResult, SkillContext
from hero.skills.sdk import command, on_message, on_overlay, on_timer, prompt, tool

__all__ = ["FetchResult", "SkillContext", "command", "on_message", "on_overlay", "on_timer", "prompt", "tool"]
