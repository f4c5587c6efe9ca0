"""One node per data dir: an exclusive `flock` on `DATA/node.lock`, held while the node runs.

Two nodes on one data dir would both own every agent's lease and fight over
the node-local files (DuckDB refuses a second writer with a long traceback).
The lock file records who holds it (pid, host, port), so a second `hero up`
is refused in one line naming the first. The kernel drops a flock when its
process dies, so a node killed with SIGKILL leaves no stale lock: the next
node takes it and overwrites the record.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from hero.errors import UsageError

LOCK_FILE = "node.lock"


class NodeLock:
    """Held from `acquire` to `release` (or the end of a `with` block, or the process)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, *, port: int) -> NodeLock:
        """Lock `data_dir` for this process, or raise UsageError saying which node holds it."""
        path = Path(data_dir) / LOCK_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot lock data dir {data_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise UsageError(f"data dir {data_dir} is in use by another node: {holder}") from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot lock data dir {data_dir}: {exc.strerror or exc}") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "port": port, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> NodeLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read(fd: int) -> dict[str, object]:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, object]) -> str:
    """`pid 123 on host, port 8080`, or as much of it as the holder had written."""
    pid, host, port = record.get("pid"), record.get("host"), record.get("port")
    if pid is None:
        return "a process that has not said which (it may be starting)"
    return f"pid {pid}" + (f" on {host}" if host else "") + (f", port {port}" if port is not None else "")
