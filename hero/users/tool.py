"""`Users`: the registry for tools (the CLI, tests, benchmarks), synchronous, over the data dir's own store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hero.identity import NodeKeys, TokenClaims, UserKey
from hero.seams.users import User
from hero.users.record import USER_TTL
from hero.users.registry import Registry

T = TypeVar("T")


class Users:
    """The registry for tools (the CLI, tests, benchmarks): its own store, every call durable when it returns.

    The store is opened at the first call that needs it (issuing a token does not). A node running on the
    same data dir hears of each change at its next request.
    """

    def __init__(self, data_dir: Path, keys: NodeKeys) -> None:
        self.data_dir = Path(data_dir)
        self.keys = keys
        self._registry: Registry | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Users:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="hero-users", daemon=True)
            self._thread.start()
            try:
                self._registry = self._run(self._open())
            except BaseException:
                self._stop()
                raise
        return self._registry

    async def _open(self) -> Registry:
        from hero.store.qss import open_qss

        store = await open_qss(self.data_dir, self.keys)
        registry = Registry(store, self.keys, data_dir=self.data_dir, note_changes=True)
        try:
            await registry.load()
        except BaseException:
            await store.aclose()
            raise
        return registry

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def add(self, name: str, agent_id: str, *, key: UserKey | None = None, grant: bytes | None = None,
            home: str | None = None) -> User:
        registry = self.registry
        return self._run(registry.add_user(name, agent_id, key=key, grant=grant, home=home))

    def get(self, name: str) -> User:
        return self.registry.get(name)

    def by_agent(self, agent_id: str) -> User | None:
        return self.registry.by_agent(agent_id)

    def list(self) -> list[User]:
        return self.registry.list()

    def revoke(self, name: str) -> User:
        registry = self.registry
        return self._run(registry.revoke_user(name))

    def call(self, work: Callable[[Registry], Coroutine[Any, Any, T]]) -> T:
        """Run `work` over the registry (and its store) on the registry's loop: a tool's composite change."""
        registry = self.registry
        return self._run(work(registry))

    def set_grant(self, name: str, grant: bytes) -> User:
        registry = self.registry
        return self._run(registry.set_grant(name, grant))

    def revoke_token(self, jti: str, expires: float | None = None) -> None:
        registry = self.registry
        self._run(registry.revoke_jti(jti, expires))

    def issue(self, user: User, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub=user.agent_id, name=user.name, role="user", ttl=ttl)

    def issue_operator(self, *, ttl: float = USER_TTL) -> tuple[str, TokenClaims]:
        return self.keys.issue_token(sub="operator", name="operator", role="operator", ttl=ttl)

    # the web's seam too (a test serving an app over a tool's registry): run on the registry's thread

    async def authenticate(self, token: str) -> TokenClaims:
        registry = self.registry
        return await self._call(registry.authenticate(token))

    async def spend_nonce(self, nonce: str, expires: float) -> bool:
        registry = self.registry
        return await self._call(registry.spend_nonce(nonce, expires))

    async def flush(self) -> None:
        """Nothing to wait for: every change is in the store when its call returns."""

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def close(self) -> None:
        if self._registry is None:
            return
        try:
            self._run(self._registry.store.aclose())
        finally:
            self._registry = None
            self._stop()

    def _stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        self._loop = self._thread = None
