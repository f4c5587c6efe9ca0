"""The catalog: which objects and versions exist on the backends, and what their manifests say.

It lists object directories, reads manifest and placement-patch replicas (picking
the valid copy most replicas agree on), applies patches to find where each
fragment is now, and names objects: an object id is a keyed hash of its store
key, and the key itself is sealed in every manifest under the node's meta key.
It remembers what this process learnt — replicas it read, names it unsealed,
heads it committed — so a put or a read of a busy object need not list every
version. It reads no fragments: that is `fetch.py`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from hero.errors import IntegrityError, NotFound, StorageError
from hero.identity import NodeKeys
from hero.seams.store import Version
from hero.store import crypto, damage, erasure, manifest, pipeline
from hero.store.backends.calls import GetMeta, ListMeta
from hero.store.base import check_key
from hero.store.damage import Identity
from hero.store.manifest import Manifest, Patch
from hero.store.pool import BackendPool

log = logging.getLogger("hero.store")
KEY_AD = b"hero-qss-key/1"
CACHE_ENTRIES = 4096
HEAD_ENTRIES = 16384  # heads this node committed, kept so the next put need not list every version


@dataclass
class ObjectIndex:
    """One listing of an object's directory over all backends: entry name -> backends that hold it."""

    oid: str
    where: dict[str, list[str]] = field(default_factory=dict)
    complete: bool = True
    kinds: dict[str, tuple[int, bool]] = field(default_factory=dict)  # entry -> (version, is_manifest), parsed once

    def add(self, name: str, backend: str) -> None:
        holders = self.where.get(name)
        if holders is None:
            parsed = manifest.parse_name(name)
            if parsed is None:
                return
            self.kinds[name] = parsed
            holders = self.where[name] = []
        holders.append(backend)

    def drop(self, name: str) -> list[str]:
        """Forget an entry (its replicas were removed); the backends that held it."""
        self.kinds.pop(name, None)
        return self.where.pop(name, [])

    def versions(self) -> list[int]:
        return sorted({version for version, is_manifest in self.kinds.values() if is_manifest})

    def patches(self, version: int) -> list[str]:
        return sorted(n for n, (v, is_manifest) in self.kinds.items() if v == version and not is_manifest)


@dataclass
class MetaRead:
    """The chosen replica of a manifest or patch, and which holders have it, another copy, or nothing."""

    digest: str
    record: Manifest | Patch
    blob: bytes
    good: list[str]
    bad: list[str]
    unreadable: list[str]


@dataclass
class Resolved:
    """A version's manifest with placement patches applied: where each fragment is now."""

    manifest: Manifest
    digest: str
    places: list[list[str]]


@dataclass(frozen=True)
class Head:
    """What a put needs of the current head: its number, its epoch (the fence) and its digest (the chain)."""

    version: int
    epoch: int
    digest: str

    @classmethod
    def of(cls, resolved: Resolved) -> Head:
        return cls(resolved.manifest.version, resolved.manifest.epoch, resolved.digest)


def codec_of(m: Manifest) -> erasure.Codec:
    """The erasure code a version was written with."""
    return erasure.codec(m.k, m.m, m.codec)


class Catalog:
    def __init__(self, pool: BackendPool, keys: NodeKeys, *, trusted_signers: Sequence[str] = ()) -> None:
        self.pool = pool
        self.node_keys = keys
        self.ring = crypto.KeyRing(keys)
        self.trusted = {keys.node_id, *trusted_signers}
        self._blobs: OrderedDict[str, MetaRead] = OrderedDict()
        self._names: dict[str, str] = {}
        self._heads: OrderedDict[str, Head] = OrderedDict()  # oid -> the head this node last committed

    # Listing and reading manifests

    async def index(self, oid: str) -> ObjectIndex:
        directory = manifest.object_dir(oid)
        results = await self.pool.fanout([(b, ListMeta(directory)) for b in self.pool.backends])
        index = ObjectIndex(oid)
        for backend, names in zip(self.pool.backends, results, strict=True):
            if not isinstance(names, list):  # the backend's fault, returned as a value
                index.complete = False
                continue
            for name in names:
                index.add(name, backend.name)
        return index

    async def read_meta(
        self, oid: str, entry: str, holders: Sequence[str], *, patch: bool, fresh: bool = False
    ) -> MetaRead:
        """Read every replica of a manifest or patch and pick the valid one most replicas agree on.

        Two different valid replicas of one version exist only if a writer lost a
        race and died before removing its own; the majority copy is the committed one.
        """
        name = f"{manifest.object_dir(oid)}/{entry}"
        if not fresh:
            cached = self._blobs.get(name)
            if cached is not None:
                return cached
        backends = [self.pool.by_name[h] for h in holders if h in self.pool.by_name]
        blobs = await self.pool.fanout([(b, GetMeta(name)) for b in backends])
        valid: dict[str, tuple[Manifest | Patch, bytes, list[str]]] = {}
        bad: list[str] = []
        unreadable: list[str] = []
        errors: dict[str, list[str]] = {}  # what is wrong -> the backends whose replica has it
        for backend, blob in zip(backends, blobs, strict=True):
            if not isinstance(blob, bytes):  # absent, or the backend's fault
                unreadable.append(backend.name)
                continue
            try:
                record = (manifest.open_patch if patch else manifest.open_manifest)(blob, self.trusted, "replica")
            except IntegrityError as exc:
                bad.append(backend.name)
                errors.setdefault(exc.message.removeprefix("replica "), []).append(backend.name)
                continue
            valid.setdefault(manifest.digest(blob), (record, blob, []))[2].append(backend.name)
        if not valid:
            if bad:
                raise IntegrityError(
                    f"no valid replica of {name}: " + "; ".join(f"{e} on {', '.join(b)}" for e, b in errors.items())
                )
            raise StorageError(f"no replica of {name} could be read from {', '.join(unreadable) or 'any backend'}")
        digest, (record, blob, good) = min(valid.items(), key=lambda kv: (-len(kv[1][2]), kv[0]))
        bad.extend(h for d, (_, _, hs) in valid.items() if d != digest for h in hs)
        found = MetaRead(digest, record, blob, good, bad, unreadable)
        self.remember(name, found)
        return found

    def remember(self, name: str, value: MetaRead) -> None:
        """Keep a replica this process read or wrote, so the next read of it asks no backend."""
        self._blobs[name] = value
        self._blobs.move_to_end(name)
        while len(self._blobs) > CACHE_ENTRIES:
            self._blobs.popitem(last=False)

    def forget(self, name: str) -> None:
        """Drop a remembered replica (its version was removed)."""
        self._blobs.pop(name, None)

    async def resolve(self, oid: str, index: ObjectIndex, version: int) -> Resolved:
        entry = manifest.entry_name(version)
        holders = index.where.get(entry)
        if not holders:
            raise NotFound(f"no version {version}")
        found = await self.read_meta(oid, entry, holders, patch=False)
        digest, record = found.digest, found.record
        assert isinstance(record, Manifest)
        if record.oid != oid or record.version != version:
            raise IntegrityError(f"manifest stored as version {version} describes another object or version")
        places = [list(s.places) for s in record.segments]
        patches: list[Patch] = []
        for name in index.patches(version):
            try:
                p = (await self.read_meta(oid, name, index.where[name], patch=True)).record
            except StorageError as exc:
                log.warning("placement patch %s skipped: %s", name, exc.message)
                continue
            assert isinstance(p, Patch)
            if p.manifest == digest and p.oid == oid and p.version == version:
                patches.append(p)
        for p in sorted(patches, key=lambda p: p.created):
            for seg, idx, frag_hash, backend in p.moves:
                if seg < len(places) and idx < record.n and record.segments[seg].hashes[idx] == frag_hash:
                    places[seg][idx] = backend
        return Resolved(record, digest, places)

    async def head(self, oid: str, index: ObjectIndex) -> Resolved | None:
        versions = index.versions()
        return await self.resolve(oid, index, versions[-1]) if versions else None

    async def versions(self, key: str) -> list[Version]:
        """Every version of `key`, oldest first, checking that each follows the one before (the hash chain)."""
        check_key(key)
        oid = self.ring.object_id(key)
        index = await self.index(oid)
        out: list[Version] = []
        previous: Resolved | None = None
        for number in index.versions():
            resolved = await self.resolve(oid, index, number)
            m = resolved.manifest
            if previous is not None and previous.manifest.version == number - 1 and m.prev != previous.digest:
                raise IntegrityError(
                    f"hash chain of {key!r} is broken: version {number} does not follow version {number - 1}"
                )
            out.append(Version(key, number, m.size, m.epoch, m.created))
            previous = resolved
        return out

    # Heads this node committed

    def committed(self, oid: str) -> Head | None:
        """The head this node last committed to `oid`, as far as it knows (another writer may have moved it)."""
        return self._heads.get(oid)

    def note_commit(self, oid: str, key: str, head: Head) -> None:
        self._names[oid] = key
        self._heads[oid] = head
        self._heads.move_to_end(oid)
        while len(self._heads) > HEAD_ENTRIES:
            self._heads.popitem(last=False)

    def forget_head(self, oid: str) -> None:
        self._heads.pop(oid, None)

    def forget_object(self, oid: str) -> None:
        """Drop all this process remembers of an object (it was purged): its name and its head."""
        self._heads.pop(oid, None)
        self._names.pop(oid, None)

    async def resolve_head(self, key: str) -> Resolved | None:
        """The newest version of `key`, by the remembered head if it is still the newest, else by listing."""
        check_key(key)
        oid = self.ring.object_id(key)
        resolved = await self._remembered_head(oid)
        if resolved is None:
            resolved = await self.head(oid, await self.index(oid))
        if resolved is not None and self.unseal_key(resolved.manifest) != key:
            raise IntegrityError(f"manifest of {key!r} names another key")
        return resolved

    async def _remembered_head(self, oid: str) -> Resolved | None:
        """The head this node committed, resolved without listing the object (see `_known_head`).

        Placement patches written since by this node drop the memory (`forget_head`);
        fragments moved by another process's repair are still found by hash (`fetch`).
        """
        head = await self._known_head(oid)
        if head is None:
            return None
        entry = manifest.entry_name(head.version)
        found = await self.read_meta(oid, entry, [b.name for b in self.pool.backends], patch=False)
        record = found.record
        if found.digest != head.digest or not isinstance(record, Manifest):
            self.forget_head(oid)
            return None
        return Resolved(record, found.digest, [list(s.places) for s in record.segments])

    async def _known_head(self, oid: str) -> Head | None:
        """The head this node last committed, if no backend holds a newer version.

        Listing every manifest costs time in proportion to the number of versions; a
        node that keeps writing one object (an agent's state, every turn) knows its
        head already. One probe of every backend for the next version's manifest
        (O(1) per backend) catches any other writer; then we list as before.
        """
        head = self._heads.get(oid)
        if head is None:
            return None
        name = manifest.manifest_name(oid, head.version + 1)
        found = await self.pool.fanout([(b, GetMeta(name)) for b in self.pool.backends])
        if any(blob is not None for blob in found):  # a newer version, or a backend we could not ask
            self._heads.pop(oid, None)
            return None
        return head

    # Names of objects

    def seal_key(self, key: str, oid: str) -> tuple[bytes, bytes]:
        """(nonce, sealed key) for a manifest: the store key, readable only with the node's meta key."""
        return crypto.seal(self.ring.meta, key.encode(), KEY_AD + bytes.fromhex(oid))

    def unseal_key(self, m: Manifest) -> str:
        plain = crypto.unseal(
            self.ring.meta, m.key_nonce, m.sealed_key, KEY_AD + bytes.fromhex(m.oid), what=f"object {m.oid[:16]}…"
        )
        return plain.decode()

    async def oids(self) -> tuple[set[str], dict[str, list[str]], bool]:
        """Every object id on any backend, which backends hold it, and whether every backend answered."""
        results = await self.pool.fanout([(b, ListMeta(manifest.OBJECTS)) for b in self.pool.backends])
        holders: dict[str, list[str]] = {}
        complete = True
        for backend, names in zip(self.pool.backends, results, strict=True):
            if not isinstance(names, list):
                complete = False
                continue
            for name in names:
                if pipeline.HEX64.match(name):
                    holders.setdefault(name, []).append(backend.name)
        return set(holders), holders, complete

    def known_name(self, oid: str) -> str | None:
        """The store key of an object this process has written or identified, without asking any backend."""
        return self._names.get(oid)

    async def name_of(self, oid: str, holders: Sequence[str]) -> str | None:
        """The store key of an object of ours (None for another node's object, an empty or a damaged one)."""
        found = await self.identify(oid, holders)
        return found.key if found.kind == "ours" else None

    async def identify(self, oid: str, holders: Sequence[str]) -> Identity:
        """Whose object this is and its store key; one whose every manifest replica fails is `damaged`."""
        known = self._names.get(oid)
        if known is not None:
            return Identity("ours", known)
        directory = manifest.object_dir(oid)
        errors: list[str] = []
        recovered: str | None = None
        seen = False
        for holder in self.pool.readable_first(holders):
            backend = self.pool.by_name[holder]
            entries = await self.pool.attempt(backend, ListMeta(directory))
            if isinstance(entries, StorageError):
                continue
            for entry in sorted(e for e in entries if (p := manifest.parse_name(e)) and p[1]):
                seen = True
                blob = await self.pool.attempt(backend, GetMeta(f"{directory}/{entry}"))
                if isinstance(blob, StorageError) or blob is None:
                    continue
                try:
                    record = manifest.open_manifest(blob, None, entry)
                    if record.signer not in self.trusted:  # another node's, if it verifies as theirs; else rot
                        manifest.open_manifest(blob, {record.signer}, entry)
                        return Identity("foreign")
                    record = manifest.open_manifest(blob, self.trusted, entry)
                except IntegrityError as exc:
                    errors.append(f"{holder}: {exc.message}")
                    recovered = recovered or self._recover_name(oid, blob)
                    continue
                name = self.unseal_key(record)
                if self.ring.object_id(name) != oid:
                    raise IntegrityError(f"object {oid[:16]}… names a key that does not hash to it")
                self._names[oid] = name
                return Identity("ours", name)
        if not seen:
            return Identity("empty")
        reason = "; ".join(errors[:3]) if errors else "no manifest replica could be read from its backends"
        return Identity("damaged", recovered, f"no valid replica of any manifest: {reason}")

    def _recover_name(self, oid: str, blob: bytes) -> str | None:
        """The store key sealed in a damaged manifest replica, if its sealed fields survived (authenticated)."""
        fields = damage.sealed_key_fields(blob)
        if fields is None:
            return None
        try:
            name = crypto.unseal(self.ring.meta, *fields, KEY_AD + bytes.fromhex(oid), what="key").decode()
        except (IntegrityError, UnicodeDecodeError):
            return None
        return name if self.ring.object_id(name) == oid else None

    async def keys(self, prefix: str = "") -> list[str]:
        oids, holders, _ = await self.oids()
        found = []
        for oid in sorted(oids):
            name = await self.name_of(oid, holders[oid])
            if name is not None and name.startswith(prefix):
                found.append(name)
        return sorted(found)
