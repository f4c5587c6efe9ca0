"""Which agent a node runs: an agent factory named in the config as `module:function` (a plugin, never imported
by the framework itself).

The factory is called with each activation's `AgentContext` and returns the
`Agent` for it. The default is the shipped assistant; a skill developer points
`[node] agent` in `hero.toml` (or `HERO_AGENT`) at their own.
"""

from __future__ import annotations

import importlib

from hero.errors import UsageError
from hero.runtime.agent import AgentFactory


def load_factory(spec: str) -> AgentFactory:
    """The factory `spec` names; a `UsageError` saying what is wrong (one line) if it cannot be loaded."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name.strip() or not name.strip():
        raise UsageError(f"agent {spec!r}: not a factory path (module:function, such as 'agents.assistant:create')")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or one that fails as it imports: say which and why
        raise UsageError(f"agent {spec!r}: cannot import {module_name!r}: {_one_line(exc)}") from None
    factory: object = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"agent {spec!r}: module {module_name!r} has no {name!r}")
    if not callable(factory):
        raise UsageError(f"agent {spec!r}: {name!r} is a {type(factory).__name__}, not a factory (a callable)")
    return factory


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())
