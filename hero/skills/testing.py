"""Testing a skill: an ephemeral local agent, the real runtime and store, no server and (unless asked) no model.

```python
from hero.skills.testing import local_agent

async def test_greets():
    async with local_agent() as agent:          # the skill of the folder under test (`hero skill test PATH`)
        assert await agent.chat("/hello Ann") == "Hello, Ann!"
        assert await agent.call("hello.greet", name="Ann") == "Hello, Ann!"
```

The agent is Hero's assistant running on a real `Node` over a real QSS in a
temporary directory, with the skill loaded as a dev skill (unsigned: it is being
written). Its model is a scripted stand-in (`agent.llm.replies`) because the skill,
not the model, is under test; `hero skill test --model` (or `model=True`) runs the
real default model instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hero.errors import HeroError
from hero.identity import NodeKeys, UserKey
from hero.runtime.agent import AgentContext
from hero.runtime.events import ApiRequest, ChatMessage
from hero.seams.llm import LLM, ToolSyntax
from hero.seams.power import Metering
from hero.skills.context import SkillServices
from hero.skills.host import SkillHost
from hero.skills.registry import SkillRegistry
from hero.skills.spec import SpecLog, SpecPolicy
from hero.skills.trust import HERO_KEY

SKILL_ENV = "HERO_SKILL_UNDER_TEST"  # the bundle folder `hero skill test` runs
MODEL_ENV = "HERO_SKILL_TEST_MODEL"  # "1": the real default model


class ScriptedModel:
    """The model's seam without a model: answers with `replies` in turn (then `default`); keeps the prompts."""

    def __init__(self, default: str = "OK.") -> None:
        self.replies: list[str] = []
        self.default = default
        self.prompts: list[list[dict[str, str]]] = []
        self.tool_syntax: ToolSyntax | None = None  # no native tool calling: tool calls are Hero's JSON
        self.options: list[dict[str, Any]] = []  # the options of each stream (grammar, tools …)

    async def stream(self, agent_id: str, messages: list[dict[str, str]], *,
                     should_stop: Callable[[], bool] | None = None, **options: Any) -> AsyncIterator[str]:
        self.prompts.append(messages)
        self.options.append(options)
        text = self.replies.pop(0) if self.replies else self.default
        for word in text.split(" "):
            if should_stop is not None and should_stop():
                return
            yield word + " "


class LocalAgent:
    def __init__(self, node: Any, agent_id: str, llm: Any) -> None:
        self.node = node
        self.agent_id = agent_id
        self.llm = llm

    async def chat(self, text: str, *, timeout_s: float = 30.0) -> str:
        """What the agent answers to a chat message."""
        reply = await self.node.deliver(self.agent_id, ChatMessage(text))
        return (await asyncio.wait_for(reply.text(), timeout_s)).strip()

    async def call(self, tool: str, **arguments: Any) -> Any:
        """Call a tool as the agent's owner would (MCP's tools/call); raises `HeroError` for a refused call."""
        reply = await self.node.deliver(self.agent_id, ApiRequest("tools/call", {"name": tool, "arguments": arguments}))
        answer = json.loads(await reply.text())
        if "error" in answer:
            raise HeroError(answer["error"]["message"])
        return answer["result"]

    async def tools(self) -> list[dict[str, Any]]:
        reply = await self.node.deliver(self.agent_id, ApiRequest("tools/list"))
        tools: list[dict[str, Any]] = json.loads(await reply.text())["tools"]
        return tools

    async def state(self, skill: str) -> dict[str, Any]:
        """The skill's slot of the agent's state, as stored or live."""
        state = await self.node.read_state(self.agent_id)
        return dict(state.get("skills", {}).get(skill, {}))

    async def next_message(self, *, timeout_s: float = 10.0) -> str:
        """The next message the agent says on its own (a reminder, an answer from another agent)."""
        from hero.chat.entry import HistoryEntry

        with self.node.subscribe(self.agent_id, HistoryEntry) as live:
            while True:
                entry = await asyncio.wait_for(live.get(), timeout_s)
                if entry.role == "assistant":
                    return str(entry.content)

    async def restart(self) -> None:
        """Hibernate the agent (its state goes to the store), so the next event activates it again."""
        await self.node.settle()
        await self.node.hibernate(self.agent_id)


def _skill_folders(paths: Sequence[Path] | None) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    under_test = os.environ.get(SKILL_ENV)
    if not under_test:
        raise RuntimeError(f"no skill to test: pass local_agent(paths=[...]) or run 'hero skill test PATH' "
                           f"({SKILL_ENV})")
    return [Path(under_test)]


@asynccontextmanager
async def local_agent(paths: Sequence[Path] | None = None, *, model: bool | None = None,
                      with_shipped: bool = False, metering: Metering | None = None,
                      llm: LLM | None = None) -> AsyncIterator[LocalAgent]:
    """An ephemeral agent running the skills in `paths` (default: the one `hero skill test` names); with
    `metering` (e.g. a `hero.power.ledger.Ledger`), its turns and skill calls are charged there; with `llm`, a
    model's service the caller started (and closes), e.g. another GGUF's."""
    from agents.assistant import create
    from hero.runtime.node import Node
    from hero.skills.registry import shipped_dir
    from hero.store.qss import open_qss

    use_model = model if model is not None else os.environ.get(MODEL_ENV) == "1"
    with tempfile.TemporaryDirectory(prefix="hero-skill-test-") as tmp:
        data = Path(tmp)
        keys = NodeKeys.load_or_create(data)
        store = await open_qss(data, keys)
        model_llm: Any
        if llm is not None:
            model_llm = llm
        elif use_model:
            from hero.scheduler.llm import LLMService
            from hero.scheduler.model import default_model_path

            model_llm = LLMService(default_model_path(), n_ctx=1024, max_tokens=128, parallel=1)
            await model_llm.start()
        else:
            model_llm = ScriptedModel()
        registry = SkillRegistry(trusted=lambda: {HERO_KEY}, shipped=shipped_dir() if with_shipped else None,
                                 dev=_skill_folders(paths), entry_points=False)
        registry.load()
        if registry.refused:
            raise HeroError("; ".join(registry.refused.values()))
        host = SkillHost(registry, SpecLog(store, SpecPolicy(keys.node_id)), SkillServices(metering=metering),
                         node_key=keys.signing)

        def factory(ctx: AgentContext) -> Any:
            return create(ctx)

        node = Node(store, model_llm, factory, node_id=keys.node_id, services={"skills": host}, metering=metering,
                    verifier=host)
        await node.start()
        try:
            yield LocalAgent(node, UserKey.generate().agent_id, model_llm)
        finally:
            await node.aclose()
            await host.aclose()
            if use_model and llm is None:
                await model_llm.aclose()
            await store.aclose()
