"""Where the node's CPU goes, by part (llm, store, web, runtime, power, net, loop), by sampling threads.

The ledger knows CPU per agent (turn steps, inference) and a runtime bucket for the rest; it does
not know which part of Hero spent it. This sampler answers that for benchmarks and operators who
ask (it is off unless `cpu_parts_hz` is set): every 1/hz s it reads each thread's on-CPU time from
`/proc/self/task/*/schedstat` and charges the time since the last sample to the part whose code
the thread is in now (the innermost frame from a known package). Statistical, like any sampling
profiler: exact in total (the kernel's per-thread counters), approximate in the split.

Threads with no Python frames are native (llama.cpp's compute threads, DuckDB's): their time goes
to `llm` while an inference is running in a Python thread in the same interval, else to `native`.
The loop thread's time in no part's code (asyncio itself, selectors) is `loop`; another Python thread's
is `other`. The sampler's own thread is charged to `sampler`, so its cost is visible.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import FrameType

PARTS = ("llm", "store", "web", "runtime", "power", "net", "loop", "other", "native", "sampler")

# Path fragments → part, checked innermost frame first; a frame in none of them (the stdlib,
# hero/identity.py) is skipped so its caller decides (a signature for the store counts as store).
_RULES: tuple[tuple[str, str], ...] = (
    ("/hero/scheduler/", "llm"),
    ("/llama_cpp/", "llm"),
    ("/hero/store/", "store"),
    ("/nacl/", "store"),
    ("/zstandard/", "store"),
    ("/pyeclib/", "store"),
    ("/hero/web/", "web"),
    ("/starlette/", "web"),
    ("/sse_starlette/", "web"),
    ("/uvicorn/", "web"),
    ("/h11/", "web"),
    ("/httptools/", "web"),
    ("/hero/users/", "web"),
    ("/hero/power/", "power"),
    ("/duckdb/", "power"),
    ("/prometheus_client/", "power"),
    ("/hero/net/", "net"),
    ("/hero/runtime/", "runtime"),
    ("/agents/", "runtime"),
)
_MAX_DEPTH = 64


def part_of_file(filename: str) -> str | None:
    for fragment, part in _RULES:
        if fragment in filename:
            return part
    return None


class PartSampler:
    """Cumulative CPU-seconds per part of this process; `start()` a daemon thread, `stop()` joins it."""

    def __init__(self, hz: float, *, task_dir: Path = Path("/proc/self/task")) -> None:
        if hz <= 0:
            raise ValueError("hz must be > 0")
        self.period_s = 1.0 / hz
        self.task_dir = task_dir
        self.seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self.samples = 0
        self._last: dict[int, int] = {}
        self._fds: dict[int, int] = {}  # tid → open schedstat file
        self._parts_by_file: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.task_dir.is_dir()

    def start(self) -> None:
        if self._thread is not None or not self.available:
            return
        self._last = self._cpu_ns()
        self._thread = threading.Thread(target=self._run, name="hero-cpu-parts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.close()

    def totals(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self) -> None:
        """Charge every thread's CPU since the previous sample to the part it is in now."""
        now = self._cpu_ns()
        frames = sys._current_frames()
        python_threads = {t.native_id: t.ident for t in threading.enumerate() if t.native_id is not None}
        own = threading.get_native_id()
        charged: dict[str, float] = {}
        native_s = 0.0
        for tid, ns in now.items():
            delta = ns - self._last.get(tid, ns)
            if delta <= 0:
                continue
            seconds = delta / 1e9
            if tid == own:
                part = "sampler"
            elif tid in python_threads:
                ident = python_threads[tid]
                frame = frames.get(ident) if ident is not None else None
                part = self._classify(frame, main=tid == os.getpid())
            else:
                native_s += seconds
                continue
            charged[part] = charged.get(part, 0.0) + seconds
        if native_s:
            part = "llm" if "llm" in charged else "native"
            charged[part] = charged.get(part, 0.0) + native_s
        self._last = now
        with self._lock:
            self.samples += 1
            for part, seconds in charged.items():
                self.seconds[part] += seconds

    def _classify(self, frame: FrameType | None, *, main: bool) -> str:
        depth = 0
        cache = self._parts_by_file
        while frame is not None and depth < _MAX_DEPTH:
            filename = frame.f_code.co_filename
            part = cache.get(filename, "?")
            if part == "?":
                part = cache[filename] = part_of_file(filename)
            if part is not None:
                return part
            frame = frame.f_back
            depth += 1
        return "loop" if main else "other"

    def _cpu_ns(self) -> dict[int, int]:
        """On-CPU nanoseconds of every thread of this process (schedstat's first field).

        Each thread's file stays open and is re-read with `pread` (1 µs, against ~15 µs to open it).
        """
        out: dict[int, int] = {}
        try:
            names = os.listdir(self.task_dir)
        except OSError:
            return out
        fds = self._fds
        for name in names:
            tid = int(name)
            fd = fds.get(tid)
            try:
                if fd is None:
                    fd = fds[tid] = os.open(self.task_dir / name / "schedstat", os.O_RDONLY)
                out[tid] = int(os.pread(fd, 64, 0).split(maxsplit=1)[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended between listing and reading; its fd is closed below
        for tid in [t for t in fds if t not in out]:
            os.close(fds.pop(tid))
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
