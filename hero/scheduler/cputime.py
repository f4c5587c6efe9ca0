"""The inference's CPU time: the inference thread's own clock plus llama.cpp's compute threads.

llama.cpp decodes with a team of threads that the calling thread starts
(OpenMP in this build); their time is inference too, and the calling thread's
clock cannot see it. The inference thread gives itself an OS thread name
of its own (`hero-llm` and its thread id, so two services in one process
keep apart), which the threads it starts inherit, so its team is found by that name in
/proc and each member's on-CPU time is read from its schedstat (one `pread`
on a kept-open file, ~1 µs). Where there is no /proc (another OS), the
inference thread's own clock is all there is.

The clock only goes forward: a member that ends keeps what it spent, and a
member found late brings its whole time (it was inference from its start),
so the service rescans right after the step that may have started a team.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from pathlib import Path

TASKS = Path("/proc/self/task")
RESCAN_S = 2.0  # look for new team members this often (the team grows when the thread count does)
PR_SET_NAME = 15


class InferenceClock:
    """CPU nanoseconds of the inference thread and its compute team. Used by the inference thread only."""

    def __init__(self, name: str = "hero-llm", tasks: Path = TASKS) -> None:
        self.name = name
        self.tasks = tasks
        self._own: int | None = None
        self._team: dict[int, int] = {}  # tid -> open schedstat fd
        self._seen: dict[int, int] = {}  # tid -> its CPU ns when last read
        self._ended_ns = 0  # CPU of members that have ended
        self._scanned_at = 0.0

    def start(self) -> None:
        """In the inference thread: take the name its compute threads will inherit."""
        self._own = threading.get_native_id()
        self.name = f"{self.name}{self._own:x}"[:15]
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
        self.rescan()

    def rescan(self) -> None:
        """Find the compute threads (call when the thread count changes; also done every `RESCAN_S`)."""
        self._scanned_at = time.monotonic()
        try:
            tids = [int(entry) for entry in os.listdir(self.tasks)]
        except OSError:
            return
        for tid in tids:
            if tid == self._own or tid in self._team:
                continue
            try:
                comm = (self.tasks / str(tid) / "comm").read_text().strip()
                if comm == self.name:
                    self._team[tid] = os.open(self.tasks / str(tid) / "schedstat", os.O_RDONLY)
            except OSError:
                continue  # the thread ended while we looked
        for tid in set(self._team) - set(tids):
            os.close(self._team.pop(tid))
            self._ended_ns += self._seen.pop(tid, 0)

    def read_ns(self) -> int:
        """The inference thread's CPU time plus its compute team's, in nanoseconds (monotonic)."""
        if time.monotonic() - self._scanned_at > RESCAN_S:
            self.rescan()
        total = time.thread_time_ns() + self._ended_ns
        seen = self._seen
        for tid, fd in self._team.items():
            try:
                seen[tid] = int(os.pread(fd, 64, 0).split()[0])
            except (OSError, IndexError, ValueError):
                pass  # ended a moment ago: its last reading stands
            total += seen.get(tid, 0)
        return total

    def close(self) -> None:
        for fd in self._team.values():
            os.close(fd)
        self._team.clear()
        self._seen.clear()
