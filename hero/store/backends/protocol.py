"""What a backend is: the protocol every one implements, the records it returns and its typed faults.

A backend stores two things. Fragments are content-addressed by their BLAKE3
hash, so writing one twice is a no-op and a backend can verify what it holds
without any key. Meta files (manifests, placement records) are named and
written put-if-absent, so two writers can never both create the same version.
Nothing is overwritten except a repair replacing a rotten copy; deletes
happen only for `gc`.

Faults are typed: `BackendDown` (unreachable, I/O error, refused) and
`BackendFull` (no space) — both `StorageError`s the caller skips and reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from hero.errors import BadRequest, StorageError
from hero.store.pipeline import HEX64

META_NAME = re.compile(r"^[a-z]+(/[A-Za-z0-9_.-]+)*$")


class BackendDown(StorageError):
    """The backend cannot be reached or failed an I/O; it is skipped and reported."""

    code = "backend_down"


class BackendFull(StorageError):
    """The backend has no space left; writes go elsewhere, reads go on."""

    code = "backend_full"


@dataclass(frozen=True)
class FragmentInfo:
    digest: str
    size: int
    mtime: float


@dataclass(frozen=True)
class BackendStat:
    name: str
    location: str
    kind: str
    address: str
    fragments: int
    bytes: int
    free_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    name: str
    location: str
    kind: str
    address: str
    fault: str | None  # why it could not be opened, if so: down from the start, tried again on each call

    async def put_fragments(self, items: Sequence[tuple[str, bytes]], *, replace: bool = False) -> None:
        """Store fragments by hash; `replace` rewrites copies that exist (repair of a rotten one)."""
        ...

    async def get_fragments(self, digests: Sequence[str]) -> list[bytes | None]:
        """The stored bytes per hash (None where absent). Not verified: the caller hashes them."""
        ...

    async def delete_fragments(self, digests: Sequence[str]) -> int: ...

    async def list_fragments(self) -> list[FragmentInfo]: ...

    async def put_meta(self, name: str, data: bytes, *, replace: bool = False) -> bool:
        """Create `name` if absent (True); False if it holds the same bytes; Conflict if it holds others."""
        ...

    async def get_meta(self, name: str) -> bytes | None: ...

    async def list_meta(self, directory: str) -> list[str]:
        """Entry names directly inside a meta directory (empty if it does not exist)."""
        ...

    async def delete_meta(self, names: Sequence[str]) -> int: ...

    async def stat(self) -> BackendStat: ...

    async def aclose(self) -> None: ...

    def blocking(self) -> BlockingBackend | None:
        """Its blocking face, if its calls may run in a batch on a worker thread (a local directory), else None.

        The pool runs the calls of every backend that has one in a single executor job, with one
        syncfs per filesystem for the writes; the others are awaited concurrently on the loop.
        """
        ...


class BlockingBackend(Protocol):
    """The same operations as blocking calls; writes with `sync=False` leave durability to `sync()`."""

    device: int  # its filesystem: writes to one filesystem are made durable by one `sync()`

    def put_fragments_sync(self, items: Sequence[tuple[str, bytes]], replace: bool = False, sync: bool = True) -> None:
        ...

    def get_fragments_sync(self, digests: Sequence[str]) -> list[bytes | None]: ...

    def delete_fragments_sync(self, digests: Sequence[str]) -> int: ...

    def list_fragments_sync(self) -> list[FragmentInfo]: ...

    def put_meta_sync(self, name: str, data: bytes, replace: bool = False, sync: bool = True) -> bool: ...

    def get_meta_sync(self, name: str) -> bytes | None: ...

    def list_meta_sync(self, directory: str) -> list[str]: ...

    def delete_meta_sync(self, names: Sequence[str]) -> int: ...

    def stat_sync(self) -> BackendStat: ...

    def sync(self) -> None:
        """Make every write so far durable (one syncfs of its filesystem)."""
        ...


def check_digest(digest: str) -> str:
    if not HEX64.match(digest):
        raise BadRequest(f"invalid fragment hash {digest!r}")
    return digest


def check_meta_name(name: str) -> str:
    if not META_NAME.match(name) or ".." in name.split("/"):
        raise BadRequest(f"invalid meta name {name!r}")
    return name
