"""The parts the web layer talks to, each behind its seam (`hero.seams`), as the handlers reach them.

`create_app` keeps one `Parts` on the app; a handler asks `parts(request)` and gets
them typed, so the type checker sees every call the web makes into another part.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request

from hero.config import NodeConfig
from hero.seams.chat import ChatHistories
from hero.seams.llm import LLMStatus
from hero.seams.net import OverlayStatus
from hero.seams.node import AgentRuntime
from hero.seams.power import PowerReports
from hero.seams.store import StateStore
from hero.seams.users import UserData, UserRegistry


@dataclass
class Parts:
    config: NodeConfig
    node: AgentRuntime
    chat: ChatHistories
    users: UserRegistry
    llm: LLMStatus
    store: StateStore
    power: PowerReports | None  # None: the node runs without power metering
    metrics: CollectorRegistry | None  # the `/metrics` exposition, built over `power` and `llm`
    started: float  # unix time the app was made
    overlay: OverlayStatus | None = None  # set once the overlay runs (it starts after the app)
    data: UserData | None = None  # the user's export and deletion (None: a node without them, e.g. a test app)


def parts(request: Request) -> Parts:
    return app_parts(request.app)


def app_parts(app: Starlette) -> Parts:
    found: Parts = app.state.parts
    return found
