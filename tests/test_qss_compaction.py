"""Compaction is crash-safe: a process killed (SIGKILL) at every step of a gc that compacts packs loses no live
fragment and brings back no deleted one, and the copies are fsynced before any source file is removed (the
order that makes a power cut at that moment safe too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import FrameType

from hero.store.packs import PackFiles
from hero.store.pipeline import fragment_hash

ROOT = Path(__file__).resolve().parents[1]

# Runs in a real subprocess: for each step of one `delete` that compacts (each write, fsync or unlink
# system call it makes), a fresh copy of the directory and a forked process that SIGKILLs itself right
# before that call. The first run only records the calls.
KILLER = r"""
import json, os, shutil, signal, sys
from pathlib import Path
from hero.store.packs import PackFiles

base, work, victims = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
WATCHED = {os.write: "write", os.writev: "writev", os.pwrite: "pwrite", os.fsync: "fsync", os.unlink: "unlink",
           os.replace: "replace", os.rename: "rename", os.ftruncate: "ftruncate"}

def run(kill_at, directory, trace):
    calls = []
    def profile(frame, event, fn):
        if event == "c_call" and fn in WATCHED:
            target = frame.f_locals.get("self") if WATCHED[fn] == "unlink" else None
            calls.append(WATCHED[fn] + (f" {Path(target).name}" if target is not None else ""))
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    packs = PackFiles(directory, fsync=True)
    sys.setprofile(profile)
    packs.delete(victims)
    sys.setprofile(None)
    packs.close()
    trace.write_text(json.dumps(calls))

def forked(kill_at, directory, trace):
    pid = os.fork()
    if pid == 0:
        try:
            run(kill_at, directory, trace)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]

shutil.copytree(base, work / "trace-run")
assert forked(0, work / "trace-run", work / "calls.json") == 0
calls = json.loads((work / "calls.json").read_text())
killed = {}
for step in range(1, len(calls) + 1):
    shutil.copytree(base, work / str(step))
    status = forked(step, work / str(step), work / "unused.json")
    killed[step] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
print(json.dumps({"calls": calls, "killed": killed}))
"""


def _frag(n: int, size: int) -> tuple[str, bytes]:
    data = n.to_bytes(4, "big") * (size // 4)
    return fragment_hash(data), data


def _pack_of_a_gone_writer(directory: Path, items: list[tuple[str, bytes]]) -> None:
    writer = PackFiles(directory, fsync=False)
    writer.append(items)
    writer.close()


def _readable(directory: Path, digests: list[str]) -> list[bytes | None]:
    reader = PackFiles(directory, fsync=False)
    try:
        return reader.read(digests)
    finally:
        reader.close()


def test_a_kill_at_every_step_of_compaction_loses_nothing(tmp_path: Path):
    base = tmp_path / "base"
    mostly_dead = [_frag(n, 3000) for n in range(5)]
    small = [_frag(n, 2000) for n in range(100, 102)]
    _pack_of_a_gone_writer(base, mostly_dead)
    _pack_of_a_gone_writer(base, small)  # a second small pack: merged too
    victims = [d for d, _ in mostly_dead[:3]]
    live = dict(mostly_dead[3:] + small)

    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", KILLER, str(base), str(work), json.dumps(victims)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    calls: list[str] = result["calls"]

    # The order: every source file is removed only after the copies were fsynced (pack, index, directory).
    removals = [i for i, call in enumerate(calls) if call.startswith("unlink") and ".pack" in call]
    syncs = [i for i, call in enumerate(calls) if call == "fsync"]
    assert len(removals) == 2 and len(syncs) >= 3, calls
    assert max(syncs) < min(removals), calls

    deletion_written = calls.index("writev") + 1  # the first write is the deletion list
    for step in range(1, len(calls) + 1):
        assert result["killed"][str(step)], f"step {step} ({calls[step - 1]}) was not killed"
        directory = work / str(step)
        after = f"killed before step {step} of {len(calls)} ({calls[step - 1]})"
        assert _readable(directory, list(live)) == list(live.values()), after
        gone = _readable(directory, victims)
        if step > deletion_written:
            assert gone == [None] * 3, after
        # What the killed process left, the next gc finishes: one pack, no index or deletion list without one.
        recovery = PackFiles(directory, fsync=False)
        recovery.delete([])
        recovery.close()
        assert _readable(directory, list(live)) == list(live.values()), after
        packs = sorted(p.name for p in directory.iterdir() if p.suffix == ".pack")
        assert len(packs) == 1, (after, packs)
        assert {p.name.split(".")[0] for p in directory.iterdir()} == {packs[0].split(".")[0]}, after


def test_a_reader_follows_records_moved_by_another_process_compaction(tmp_path: Path):
    """A reader that opens while another process compacts (the copies written into that process's older pack,
    the source not yet removed) takes the source's entries; once the source is gone it finds the copies."""
    keep = [_frag(n, 2000) for n in range(4)]
    doomed = [_frag(n, 2000) for n in range(10, 16)]
    node = PackFiles(tmp_path, fsync=False)  # the long-lived process: its pack sorts first
    node.append([_frag(99, 100)])
    _pack_of_a_gone_writer(tmp_path, keep + doomed)
    readers: list[PackFiles] = []

    def open_reader_before_the_first_removal(frame: FrameType, event: str, fn: object) -> None:
        if event == "c_call" and fn is os.unlink and not readers:
            readers.append(PackFiles(tmp_path, fsync=False))

    sys.setprofile(open_reader_before_the_first_removal)
    try:
        assert node.delete([d for d, _ in doomed]) == 6  # the source is mostly dead: compacted and removed
    finally:
        sys.setprofile(None)
    (reader,) = readers
    assert len(list(tmp_path.glob("*.pack"))) == 1
    assert reader.read([d for d, _ in keep]) == [v for _, v in keep]
    assert reader.locate(keep[0][0]) is not None
    reader.close()
    node.close()
