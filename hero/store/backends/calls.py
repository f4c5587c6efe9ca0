"""Backend operations as typed values, so one fan-out runs any of them on every backend at once.

A call runs either on the loop through a backend's async face (`run`) or on a
worker thread through its blocking face (`blocking`), where the pool batches
every directory backend into one executor job. On the blocking face a write
leaves durability to the pool, which syncs each filesystem once (`writes`).
Its result type is the call's type parameter, so a fan-out's results are typed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from hero.store.backends.protocol import Backend, BackendStat, BlockingBackend, FragmentInfo

R = TypeVar("R", covariant=True)


class Call(Protocol[R]):
    writes: ClassVar[bool]  # a write: made durable by the pool's sync, and the proof a full backend has room again

    async def run(self, backend: Backend) -> R: ...

    def blocking(self, backend: BlockingBackend) -> R: ...


@dataclass(frozen=True)
class PutFragments:
    items: Sequence[tuple[str, bytes]]
    replace: bool = False
    writes: ClassVar[bool] = True

    async def run(self, backend: Backend) -> None:
        await backend.put_fragments(self.items, replace=self.replace)

    def blocking(self, backend: BlockingBackend) -> None:
        backend.put_fragments_sync(self.items, self.replace, sync=False)


@dataclass(frozen=True)
class GetFragments:
    digests: Sequence[str]
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> list[bytes | None]:
        return await backend.get_fragments(self.digests)

    def blocking(self, backend: BlockingBackend) -> list[bytes | None]:
        return backend.get_fragments_sync(self.digests)


@dataclass(frozen=True)
class DeleteFragments:
    digests: Sequence[str]
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> int:
        return await backend.delete_fragments(self.digests)

    def blocking(self, backend: BlockingBackend) -> int:
        return backend.delete_fragments_sync(self.digests)


@dataclass(frozen=True)
class ListFragments:
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> list[FragmentInfo]:
        return await backend.list_fragments()

    def blocking(self, backend: BlockingBackend) -> list[FragmentInfo]:
        return backend.list_fragments_sync()


@dataclass(frozen=True)
class PutMeta:
    name: str
    data: bytes
    replace: bool = False
    writes: ClassVar[bool] = True

    async def run(self, backend: Backend) -> bool:
        return await backend.put_meta(self.name, self.data, replace=self.replace)

    def blocking(self, backend: BlockingBackend) -> bool:
        return backend.put_meta_sync(self.name, self.data, self.replace, sync=False)


@dataclass(frozen=True)
class GetMeta:
    name: str
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> bytes | None:
        return await backend.get_meta(self.name)

    def blocking(self, backend: BlockingBackend) -> bytes | None:
        return backend.get_meta_sync(self.name)


@dataclass(frozen=True)
class ListMeta:
    directory: str
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> list[str]:
        return await backend.list_meta(self.directory)

    def blocking(self, backend: BlockingBackend) -> list[str]:
        return backend.list_meta_sync(self.directory)


@dataclass(frozen=True)
class DeleteMeta:
    names: Sequence[str]
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> int:
        return await backend.delete_meta(self.names)

    def blocking(self, backend: BlockingBackend) -> int:
        return backend.delete_meta_sync(self.names)


@dataclass(frozen=True)
class Stat:
    writes: ClassVar[bool] = False

    async def run(self, backend: Backend) -> BackendStat:
        return await backend.stat()

    def blocking(self, backend: BlockingBackend) -> BackendStat:
        return backend.stat_sync()
