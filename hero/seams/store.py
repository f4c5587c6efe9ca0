"""The runtime ↔ store seam: a small async, versioned, fenced object store (QSS implements it).

Every put makes a new version; nothing is overwritten. A put carries the
writer's lease epoch and is refused with `StaleEpoch` when the object's head was
written with a higher epoch, so two owners of one agent can never both move its
state (fencing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Version:
    """One stored version of an object."""

    key: str
    version: int
    size: int
    epoch: int
    created: float


class StateStore(Protocol):
    async def put(self, key: str, data: bytes, *, epoch: int, expect: int | None = None) -> Version:
        """Store `data` as the next version of `key`. Raises StaleEpoch if `epoch` is older than the head's.

        With `expect` (the version the caller read; 0: none yet), only as version `expect + 1`: Conflict if
        another writer got there first (compare-and-set, for read-modify-write callers such as the registry).
        """
        ...

    async def get(self, key: str, version: int | None = None) -> bytes:
        """The latest (or the given) version's bytes. Raises NotFound."""
        ...

    async def head(self, key: str) -> Version | None:
        """The newest version's record without its data, or None if the key does not exist."""
        ...

    async def latest(self, key: str) -> tuple[Version, bytes] | None:
        """The head version and its bytes in one read, or None if the key does not exist.

        Activation needs both (the head's epoch fences the new owner), and reading
        them together costs one lookup instead of a scan of every version.
        """
        ...

    async def versions(self, key: str) -> list[Version]:
        """Every stored version of `key`, oldest first; empty if the key does not exist."""
        ...

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys that have at least one version and start with `prefix`, sorted."""
        ...

    async def aclose(self) -> None:
        """Finish background work and release resources."""
        ...


@runtime_checkable
class StoreStatus(Protocol):
    """A store that reports its health to the operator (QSS: backends, fragments, scrubs, repairs)."""

    async def status(self) -> dict[str, Any]: ...


@runtime_checkable
class VersionPruning(Protocol):
    """A store that drops old versions of one object (QSS): for objects whose old versions hold nothing the
    newest does not, such as an agent's head; everything else keeps the operator's `keep_versions`."""

    async def prune(self, key: str, keep: int) -> int:
        """Drop all but the newest `keep` versions of `key`; how many were dropped."""
        ...


class Purged(Protocol):
    """What a purge removed, and what it could not (`hero.store.gc.PurgeReport`)."""

    @property
    def objects(self) -> int: ...

    @property
    def left(self) -> Sequence[str]:
        """Why something may remain (a backend that did not answer): empty when everything is gone."""
        ...

    @property
    def pending(self) -> bool:
        """What is left is recorded by the store and deleted there once those backends answer again."""
        ...

    @property
    def kept(self) -> bool:
        """Something may remain that the store will not delete by itself: the deletion is not done."""
        ...

    def to_json(self) -> dict[str, Any]: ...


@runtime_checkable
class Purging(Protocol):
    """A store that deletes for good (QSS): every version and every fragment, on every backend.

    Only a user's deletion of their data asks this; everything else only ever adds versions.
    """

    async def purge(self, prefix: str) -> Purged:
        """Every object whose key starts with `prefix` (which ends with '/')."""
        ...

    async def delete(self, key: str) -> Purged:
        """One object, every version of it."""
        ...
