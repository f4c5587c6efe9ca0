"""A backend on a fragment server (`hero storage serve`) over HTTP, every request signed by the node key."""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import select
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from urllib.parse import urlsplit

from hero.errors import BadRequest, Conflict, IntegrityError
from hero.identity import NodeKeys
from hero.store import reqsign
from hero.store.backends.protocol import (
    BackendDown,
    BackendFull,
    BackendStat,
    FragmentInfo,
    check_meta_name,
)
from hero.store.backends.wire import decode_found, encode_digests, encode_fragments


class RemoteBackend:
    """A fragment server (`hero storage serve`) over HTTP; every request is signed by the node key.

    Uses blocking `http.client` connections from a small pool, run in the I/O
    executor: keep-alive, no extra dependency, and fragments stream as bytes.
    """

    kind = "remote"
    fault: str | None = None  # a server that does not answer is found down by its first call

    def __init__(
        self, url: str, *, name: str, location: str, keys: NodeKeys, executor: Executor | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest(f"backend url must be http(s)://host:port, got {url!r}")
        self.name = name
        self.location = location
        self.address = url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._keys = keys
        self._executor = executor
        self._timeout_s = timeout_s
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """A pooled keep-alive connection the server has not closed (reused: True), else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if not _closed_by_peer(conn):
                return conn, True
            conn.close()
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout_s), False

    def _request(self, method: str, path: str, body: bytes = b"", ok: Sequence[int] = (200,)) -> tuple[int, bytes]:
        target = self._prefix + path
        while True:
            conn, reused = self._connection()
            headers = reqsign.sign_headers(self._keys, method, target, body)  # signed afresh: replays are refused
            headers["Content-Length"] = str(len(body))
            answered = False
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                answered = True
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and not answered and isinstance(exc, _STALE):
                    continue  # the server closed it while idle: not an outage (every call here is idempotent)
                raise BackendDown(f"backend {self.name} ({self.address}) unreachable: {exc}") from None
            break
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        status = response.status
        if status in ok:
            return status, data
        message, kind = _error_of(data)
        message = message or response.reason
        if status == 507:
            raise BackendFull(f"backend {self.name} ({self.address}) is full: {message}")
        if status == 409:
            raise Conflict(f"backend {self.name}: {message}")
        if kind == IntegrityError.code:
            raise IntegrityError(f"backend {self.name}: {message}")
        if status in (401, 403):
            raise BackendDown(f"backend {self.name} ({self.address}) refused this node ({status}): {message}")
        raise BackendDown(f"backend {self.name} ({self.address}) answered {status}: {message}")

    async def _call(self, method: str, path: str, body: bytes = b"", ok: Sequence[int] = (200,)) -> tuple[int, bytes]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(self._request, method, path, body, ok)
        )

    async def put_fragments(self, items: Sequence[tuple[str, bytes]], *, replace: bool = False) -> None:
        if items:
            await self._call("POST", f"/v1/fragments/put?replace={int(replace)}", encode_fragments(items), ok=(204,))

    async def get_fragments(self, digests: Sequence[str]) -> list[bytes | None]:
        if not digests:
            return []
        _, data = await self._call("POST", "/v1/fragments/get", encode_digests(digests))
        return decode_found(data, len(digests))

    async def delete_fragments(self, digests: Sequence[str]) -> int:
        _, data = await self._call("POST", "/v1/fragments/delete", encode_digests(digests))
        return int(json.loads(data)["removed"])

    async def list_fragments(self) -> list[FragmentInfo]:
        _, data = await self._call("GET", "/v1/fragments")
        return [FragmentInfo(d, int(s), float(t)) for d, s, t in json.loads(data)["fragments"]]

    async def put_meta(self, name: str, data: bytes, *, replace: bool = False) -> bool:
        status, _ = await self._call(
            "PUT", f"/v1/meta/{check_meta_name(name)}?replace={int(replace)}", data, ok=(200, 201)
        )
        return status == 201

    async def get_meta(self, name: str) -> bytes | None:
        status, data = await self._call("GET", f"/v1/meta/{check_meta_name(name)}", ok=(200, 404))
        return data if status == 200 else None

    async def list_meta(self, directory: str) -> list[str]:
        _, data = await self._call("GET", f"/v1/meta-list/{check_meta_name(directory)}")
        return list(json.loads(data)["names"])

    async def delete_meta(self, names: Sequence[str]) -> int:
        body = json.dumps([check_meta_name(n) for n in names]).encode()
        _, data = await self._call("POST", "/v1/meta-delete", body)
        return int(json.loads(data)["removed"])

    async def stat(self) -> BackendStat:
        _, data = await self._call("GET", "/v1/status")
        raw = json.loads(data)
        return BackendStat(
            self.name, self.location, self.kind, self.address, int(raw["fragments"]), int(raw["bytes"]),
            raw.get("free_bytes"),
        )

    async def aclose(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def blocking(self) -> None:
        return None  # every call is a request: awaited concurrently, not batched on a thread


# What a request on a keep-alive connection the server has just closed fails with, before any answer. Retried
# on another connection (only a reused one is, so this ends at a new one at the latest), as httpx and urllib3 do:
# every call is idempotent — fragments are content-addressed, a manifest put-if-absent of the same bytes
# answers "exists", a delete or get repeated finds the same state.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)  # RemoteDisconnected is a reset


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection is unusable: no socket, or readable (the server's FIN, or bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()  # not select(): it cannot watch a descriptor over 1024, which a busy node has
    try:
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))  # POLLHUP and POLLERR are reported whether asked for or not
    except (OSError, ValueError):
        return True


def _error_of(data: bytes) -> tuple[str, str]:
    """(message, type) of a fragment server's JSON error body."""
    try:
        error = json.loads(data)["error"]
        return str(error["message"]), str(error.get("type", ""))
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace"), ""
