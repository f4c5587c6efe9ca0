"""Shared test helpers: real stores and nodes on 127.0.0.1, real model, real CLI processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from hero.chat.entry import HistoryEntry
from hero.chat.histories import Histories
from hero.config import NodeConfig
from hero.identity import NodeKeys, UserKey
from hero.runtime.agent import AgentFactory
from hero.runtime.node import Node
from hero.scheduler.llm import LLMService
from hero.scheduler.model import default_model_path
from hero.seams.llm import LLM
from hero.server import Parts, open_node, open_store
from hero.store.qss import QSS
from hero.users import Users
from tests.doubles import ScriptedLLM

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def llm(model_path: Path) -> LLMService:
    """One real llama.cpp service for the whole run; its thread serves requests from any test's loop."""
    service = LLMService(model_path, n_ctx=1024, max_tokens=24, temperature=0.0)
    asyncio.run(service.start())
    yield service
    asyncio.run(service.aclose())


def make_config(tmp_path: Path, **changes: Any) -> NodeConfig:
    base = NodeConfig(data_dir=tmp_path / "data", port=free_port(), max_tokens=24, n_ctx=1024, overlay="off")
    return replace(base, **changes)


@asynccontextmanager
async def serving_app(app: Any, port: int) -> AsyncIterator[None]:
    """A real HTTP server for `app` on 127.0.0.1:`port`, in this test's event loop, until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serving(config: NodeConfig, *, agent_factory: AgentFactory | None = None) -> AsyncIterator[Parts]:
    """A real node with a real HTTP server on 127.0.0.1, in this test's event loop."""
    async with open_node(config, agent_factory=agent_factory) as parts, serving_app(parts.app, config.port):
        yield parts


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[QSS]:
    """A real QSS (20 directory backends) in this test's data dir, with the node's keys."""
    config = make_config(tmp_path)
    s = await open_store(config, NodeKeys.load_or_create(config.data_dir))
    yield s
    await s.aclose()


def make_node(store: QSS, agent_factory: AgentFactory, *, llm: LLM | None = None, **options: Any) -> Node:
    """A runtime over `store`, owned by that data dir's node key; the LLM double unless a test brings the model."""
    node_id = NodeKeys.load_or_create(store.data_dir).node_id
    return Node(store, llm or ScriptedLLM(), agent_factory, node_id=node_id, **options)


def new_agent() -> str:
    return UserKey.generate().agent_id


async def history(node: Node, agent_id: str) -> list[HistoryEntry]:
    """The agent's chat history as the edge reads it (without activating the agent)."""
    return await Histories(node).entries(agent_id)


def add_user(data_dir: Path, name: str) -> dict[str, str]:
    users = Users(data_dir, NodeKeys.load_or_create(data_dir))
    try:
        key = UserKey.generate()
        user = users.add(name, key.agent_id, key=key)  # their key signs the grant to host their agent
        token, _ = users.issue(user)
        return {"name": name, "agent_id": user.agent_id, "token": token}
    finally:
        users.close()


def operator_token(data_dir: Path) -> str:
    users = Users(data_dir, NodeKeys.load_or_create(data_dir))
    try:
        return users.issue_operator()[0]
    finally:
        users.close()


def hero_cli(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the real `hero` command in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "hero.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(f"hero {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def hero_up_on_a_taken_port(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`hero up` whose port is taken: what it refuses before it would bind (its settings are checked first)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        return hero_cli("up", "--data", str(data_dir), "--port", str(busy.getsockname()[1]), *args, check=False)


def hero_json(*args: str) -> Any:
    return json.loads(hero_cli(*args, "--json").stdout)


@pytest.fixture
def env_no_proxy() -> dict[str, str]:
    return {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Parts]:
    """A served node with users alice and bob and an operator token; openai clients in `clients` are closed."""
    config = make_config(tmp_path)
    async with serving(config) as parts:
        parts.base_url = f"http://127.0.0.1:{config.port}"
        parts.alice = add_user(config.data_dir, "alice")
        parts.bob = add_user(config.data_dir, "bob")
        parts.operator = operator_token(config.data_dir)
        parts.clients = []
        yield parts
        for client in parts.clients:
            await client.close()
