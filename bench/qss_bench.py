"""QSS benchmark: the figures of BENCHMARKS.md (## QSS), measured through the real store on one core.

    .venv/bin/python bench/qss_bench.py                 # one core, fsync on (the default config)
    .venv/bin/python bench/qss_bench.py --no-fsync      # page-cache durability (survives kill -9, not power loss)
    .venv/bin/python bench/qss_bench.py --quick         # smaller runs (~1 min): a before/after check of a change

Every figure goes through QSS itself (zstd -> XChaCha20-Poly1305 -> RS 16+4 -> BLAKE3 -> 20 directory
backends), printed beside the seed's ~50 MB/s reference and beside zstd-3 compression alone, measured in
the same run on the same data: the write path's floor.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import mmap
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

from hero.identity import NodeKeys
from hero.store.backends.directory import sync_filesystem
from hero.store.packs import PackFiles
from hero.store.pipeline import fragment_hash
from hero.store.qss import QSS, open_qss

MiB = 1 << 20
SEED_REFERENCE = 50.0  # MB/s, ThreeFold's "up to 50 MB/sec" per QSFS instance
TARGETS = {"write_json": 250.0, "read_4_lost": 800.0, "small_put_p99_ms": 5.0}


def agent_state(nbytes: int, seed: int = 1) -> bytes:
    """JSON lines like an agent's chat history: Zipf-distributed words, ids, timestamps, small metadata."""
    rnd = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rnd.choice(letters[: rnd.randint(8, 26)]) for _ in range(rnd.randint(1, 9))) for _ in range(20000)]
    weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    out: list[str] = []
    size, t = 0, 1.7e9
    while size < nbytes:
        t += rnd.expovariate(1 / 30)
        words = rnd.choices(vocab, cum_weights=weights, k=rnd.randint(4, 120))
        record = {
            "id": f"{rnd.getrandbits(64):016x}", "ts": round(t, 3), "role": rnd.choice(("user", "assistant", "tool")),
            "content": " ".join(words), "tokens": rnd.randint(1, 500),
            "meta": {"skill": rnd.choice(("mail", "calendar", "notes", "search")), "ok": rnd.random() < 0.97},
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:nbytes]


def zstd_alone(data: bytes, level: int, segment: int) -> tuple[float, float]:
    """(compress, decompress) MB/s of zstd alone over the same segments the store uses."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    dctx = zstandard.ZstdDecompressor()
    view = memoryview(data)
    parts = []
    began = time.perf_counter()
    for off in range(0, len(data), segment):
        parts.append(cctx.compress(view[off : off + segment]))
    compress = len(data) / (time.perf_counter() - began) / 1e6
    began = time.perf_counter()
    for part in parts:
        dctx.decompress(part)
    return compress, len(data) / (time.perf_counter() - began) / 1e6


async def timed(coro: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - began


class Floor:
    """zstd-3 alone on the JSON data, measured right before each timed operation.

    The machine is shared and noisy, so a ratio is only fair against a floor taken
    in the same moment: each figure is the median of its runs, each ratio the
    median of per-run ratios.
    """

    def __init__(self, json_data: bytes, level: int = 3) -> None:
        self.data = json_data
        self.level = level
        self.compress: list[float] = []
        self.decompress: list[float] = []

    def sample(self) -> tuple[float, float]:
        c, d = zstd_alone(self.data, self.level, 4 * MiB)
        self.compress.append(c)
        self.decompress.append(d)
        return c, d


async def measure(floor: Floor, runs: int, nbytes: int, op: Any, *, read: bool = False) -> tuple[float, float]:
    """(median MB/s, median ratio to zstd-3 compression alone) over `runs` runs of `op()`."""
    speeds, ratios = [], []
    for _ in range(runs):
        compress, _ = floor.sample()
        _, took = await timed(op())
        speeds.append(nbytes / took / 1e6)
        ratios.append(speeds[-1] / compress)
    return statistics.median(speeds), statistics.median(ratios)


async def throughput(root: Path, args: argparse.Namespace, floor: Floor, random_data: bytes) -> dict[str, Any]:
    store = await open_qss(root, NodeKeys.load_or_create(root), fsync=args.fsync, cpu_workers=args.cores,
                           tune_malloc=args.tune_malloc, zstd_level=args.zstd_level)
    out: dict[str, Any] = {}
    objects = (("json", floor.data), ("random", random_data))
    try:
        for name, data in objects:
            out[f"write_{name}"] = await measure(
                floor, args.runs, len(data), lambda n=name, d=data: store.put(f"node/bench-{n}", d, epoch=1)
            )
            out[f"read_{name}_all"] = await measure(
                floor, args.runs, len(data), lambda n=name: store.get(f"node/bench-{n}")
            )
        backends = root / "backends"
        lost = [backends / f"{n:02d}" for n in (2, 7, 11, 17)]
        for path in lost:
            path.rename(path.with_name(path.name + "-lost"))
        for name, data in objects:
            assert await store.get(f"node/bench-{name}") == data
            out[f"read_{name}_4_lost"] = await measure(
                floor, args.runs, len(data), lambda n=name: store.get(f"node/bench-{n}")
            )
        for path in lost:
            path.with_name(path.name + "-lost").rename(path)
        compress, _ = floor.sample()
        report, took = await timed(store.scrub())
        scrub = report["bytes"] / took / 1e6
        out["scrub_fragment_mb_s"] = (scrub, scrub / compress)
        out["scrub_report"] = {k: report[k] for k in ("checked", "corrupt", "missing", "repaired")}
    finally:
        await store.aclose()
    return out


class DiskFloor:
    """The disk work a durable 21 KB put cannot avoid, done with bare syscalls on the same filesystem:
    append a fragment-sized record to 20 files and sync, then write 5 manifest-sized files
    (create-if-absent through a temp file and a link, as the store does) and sync again.
    Timed right after each put, so the put's ratio to it is steady while the VM's disk is not."""

    def __init__(self, root: Path, fsync: bool) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True)
        self.fds = [os.open(root / f"pack-{i:02d}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for i in range(20)]
        self.dir_fd = os.open(root, os.O_RDONLY)
        self.count = itertools.count()
        self.fragment, self.manifest = os.urandom(1_400), os.urandom(2_600)

    def once(self) -> float:
        began = time.perf_counter()
        for fd in self.fds:
            os.write(fd, self.fragment)
        self._sync()
        n = next(self.count)
        for i in range(5):
            tmp = self.root / f"tmp-{n}-{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, self.manifest)
            os.close(fd)
            os.link(tmp, self.root / f"m-{n}-{i}")
            os.unlink(tmp)
        self._sync()
        return time.perf_counter() - began

    def _sync(self) -> None:
        if self.fsync:
            sync_filesystem(self.dir_fd)  # what DirBackend.sync calls

    def close(self) -> None:
        for fd in (*self.fds, self.dir_fd):
            os.close(fd)


async def latency(root: Path, args: argparse.Namespace) -> dict[str, float]:
    state = agent_state(21_000, seed=2)
    store = await open_qss(root, NodeKeys.load_or_create(root), fsync=args.fsync, cpu_workers=args.cores,
                           tune_malloc=args.tune_malloc)
    disk = DiskFloor(root / "disk-floor", args.fsync)
    puts: list[float] = []
    gets: list[float] = []
    floors: list[float] = []
    try:
        for i in range(args.small):
            key = f"agent/{i % 50:064x}/state"
            puts.append((await timed(store.put(key, state, epoch=1)))[1])
            floors.append(disk.once())
            gets.append((await timed(store.get(key)))[1])
    finally:
        await store.aclose()
        disk.close()
    puts.sort()
    gets.sort()
    floors.sort()

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1e3

    return {"put_p50_ms": pct(puts, 0.5), "put_p99_ms": pct(puts, 0.99), "get_p50_ms": pct(gets, 0.5),
            "get_p99_ms": pct(gets, 0.99), "disk_p50_ms": pct(floors, 0.5), "disk_p99_ms": pct(floors, 0.99)}


async def by_versions(root: Path, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Put and `latest` of a 21 KB object as its versions pile up (about two per chat turn, until `gc`):
    `latest` by the node that wrote it, and by a freshly started node (after a restart: nothing remembered)."""
    state = agent_state(21_000, seed=3)
    keys = NodeKeys.load_or_create(root)
    store = await open_qss(root, keys, fsync=args.fsync, cpu_workers=args.cores, tune_malloc=args.tune_malloc)
    out: dict[int, dict[str, float]] = {}
    written = 0
    try:
        for target in args.versions:
            while written < target - 1:
                await store.put("agent/" + "ab" * 32 + "/state", state, epoch=1)
                written += 1
            _, put = await timed(store.put("agent/" + "ab" * 32 + "/state", state, epoch=1))
            written += 1
            _, own = await timed(store.latest("agent/" + "ab" * 32 + "/state"))
            fresh = await open_qss(root, keys, fsync=args.fsync, cpu_workers=args.cores, tune_malloc=args.tune_malloc)
            try:
                _, restarted = await timed(fresh.latest("agent/" + "ab" * 32 + "/state"))
            finally:
                await fresh.aclose()
            out[target] = {"put_ms": put * 1e3, "latest_ms": own * 1e3, "latest_after_restart_ms": restarted * 1e3}
    finally:
        await store.aclose()
    return out


async def repair(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Lose one backend's disk holding `held` MiB and time the scrub that rebuilds it; scaled to 1 GiB."""
    store: QSS = await open_qss(root, NodeKeys.load_or_create(root), fsync=args.fsync, cpu_workers=args.cores,
                           tune_malloc=args.tune_malloc)
    try:
        total = args.repair_held_mib * 16 * MiB  # incompressible: each backend holds 1/16 of the plaintext
        chunk = 64 * MiB
        for n in range(max(1, total // chunk)):
            await store.put(f"node/repair-{n}", os.urandom(chunk), epoch=1)
        victim = root / "backends" / "05" / "packs"
        held = sum(p.stat().st_size for p in victim.iterdir())
        shutil.rmtree(victim)
        victim.mkdir()  # the disk is replaced by an empty one
        report, took = await timed(store.scrub())
        assert report["missing"] > 0 and report["repaired"] == report["missing"], report
    finally:
        await store.aclose()
    return {"held_mib": held / MiB, "seconds": took, "rebuilt_mb_s": held / took / 1e6,
            "seconds_per_gib": took * (1 << 30) / held}


def index_open(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Opening one directory backend's packs: reading (and checking) the index of every fragment it holds.

    Fragments are 1.3 KiB records written in put-sized batches by one process, as a node writes them;
    the figure is the median time per fragment over a few opens of the same directory.
    """
    count = args.index_fragments
    packs = PackFiles(root)
    try:
        batch: list[tuple[str, bytes]] = []
        for n in range(count):
            data = n.to_bytes(8, "big") * 170
            batch.append((fragment_hash(data), data))
            if len(batch) == 50:
                packs.append(batch)
                batch = []
        packs.append(batch)
    finally:
        packs.close()
    times, floors = [], []
    for _ in range(5):
        began = time.perf_counter()
        opened = PackFiles(root)
        times.append(time.perf_counter() - began)
        assert opened.totals()[0] == count
        opened.close()
        floors.append(_index_floor(root))
    return {"fragments": count, "us_per_fragment": statistics.median(times) / count * 1e6,
            "floor_us_per_fragment": statistics.median(floors) / count * 1e6,
            "ratio": statistics.median(t / f for t, f in zip(times, floors, strict=True))}


def _index_floor(root: Path) -> float:
    """The least an open can do: read every index file and put each entry's digest in a dict, unchecked."""
    began = time.perf_counter()
    where: dict[bytes, int] = {}
    for path in root.glob("*.idx"):
        raw = path.read_bytes()
        size = 48 if raw[:4] == b"HQI2" else 44  # entries with or without their checksum
        for at in range(len(raw) % size, len(raw), size):
            where[raw[at : at + 32]] = at
    return time.perf_counter() - began


def warm_guest_memory(gib: float) -> float:
    """Touch and release `gib` GiB once, so page-cache and heap pages are already backed by the hypervisor.

    A freshly booted VM pays ~10 µs per 4 KiB page the first time the guest uses it (measured here:
    a 20 MiB write to a new file takes 70 ms cold and 5 ms after warming). Bare metal never pays
    this; without warming, a benchmark measures the hypervisor, not the pipeline. Seconds taken.
    """
    began = time.perf_counter()
    size = int(gib * (1 << 30))
    if size:
        region = mmap.mmap(-1, size)
        for off in range(0, size, mmap.PAGESIZE):
            region[off] = 1
        region.close()
    return time.perf_counter() - began


def row(name: str, value: float, unit: str, zstd: float | None = None, target: str = "",
        ratio: float | None = None) -> str:
    ref = f"{value / SEED_REFERENCE:5.1f}x" if unit == "MB/s" else "   - "
    floor = f"{ratio if ratio is not None else value / zstd:5.2f}x" if zstd else "   - "
    return f"  {name:38} {value:9.1f} {unit:5}  vs 50 MB/s {ref}  vs zstd alone {floor}  {target}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", type=int, default=0, help="pin to this core (default 0); -1: no pinning")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=500, help="21 KB puts/gets for the latency figures")
    parser.add_argument("--repair-held-mib", type=int, default=64,
                        help="fragment MiB on the lost backend (1024 for the full 1 GiB case; needs ~22 GB disk)")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    parser.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                        help="keep glibc's default malloc thresholds (see hero/store/tuning.py)")
    parser.add_argument("--dir", type=Path, help="where the backends live (default: a temp dir)")
    parser.add_argument("--warm-gib", type=float, default=3.0,
                        help="guest memory to touch once before measuring (0: measure a cold VM as it is)")
    parser.add_argument("--versions", type=lambda text: [int(n) for n in text.split(",")], default=[10, 200, 1000],
                        help="version counts at which to time put and latest (comma-separated)")
    parser.add_argument("--zstd-level", type=int, default=3,
                        help="the store's zstd level for the throughput runs, and of the floor beside them")
    parser.add_argument("--index-fragments", type=int, default=200_000,
                        help="fragments in the backend whose opening (index read) is timed")
    parser.add_argument("--quick", action="store_true",
                        help="16 MiB objects, 200 small puts, 8 MiB repair, versions 10,200, 0.5 GiB warm-up")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.small, args.repair_held_mib, args.versions = 16, 200, 8, [10, 200]
        args.warm_gib, args.index_fragments = min(args.warm_gib, 0.5), 50_000
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})  # before any thread exists: every thread inherits one core
    cores = args.cores = len(os.sched_getaffinity(0))  # one sealing/decoding thread per core

    warmed = warm_guest_memory(args.warm_gib)
    floor = Floor(agent_state(args.size_mib * MiB), args.zstd_level)
    random_data = os.urandom(args.size_mib * MiB)
    base = Path(tempfile.mkdtemp(prefix="qss-bench-", dir=args.dir))
    try:
        # Small puts first, on a filesystem with nothing else dirty: syncfs flushes every dirty page of the
        # filesystem, so right after the bulk runs a small put would also pay for their writeback.
        os.sync()
        small = asyncio.run(latency(base / "latency", args))
        measured = asyncio.run(throughput(base / "throughput", args, floor, random_data))
        results = {
            "cores": cores, "fsync": args.fsync, "tune_malloc": args.tune_malloc, "size_mib": args.size_mib,
            "dir": str(base), "load_average": os.getloadavg(), "warm_gib": args.warm_gib, "warm_seconds": warmed,
            "zstd3_compress_mb_s": statistics.median(floor.compress),
            "zstd3_decompress_mb_s": statistics.median(floor.decompress),
            **measured,
            **small,
            "repair": asyncio.run(repair(base / "repair", args)),
            "index_open": index_open(base / "index", args),
            "by_versions": asyncio.run(by_versions(base / "versions", args)),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    r = results
    print(f"QSS bench: {cores} core(s), fsync={'on' if args.fsync else 'off'}, malloc tuned={args.tune_malloc}, "
          f"{args.size_mib} MiB objects, RS 16+4, zstd-{args.zstd_level}, XChaCha20-Poly1305, BLAKE3, "
          f"20 directory backends in "
          f"{Path(r['dir']).parent}, load average {r['load_average'][0]:.2f}, "
          f"{args.warm_gib:g} GiB guest memory pre-touched ({warmed:.1f} s)")
    z_compress = r["zstd3_compress_mb_s"]
    print(row(f"zstd-{args.zstd_level} compress alone (JSON)", z_compress, "MB/s"))
    print(row("zstd decompress alone (JSON)", r["zstd3_decompress_mb_s"], "MB/s"))

    def speed(name: str, key: str, target: float | None = None) -> None:
        value, ratio = r[key]
        verdict = "" if target is None else f"target >= {target:g}: {'ok' if value >= target else 'MISSED'}"
        print(row(name, value, "MB/s", z_compress, verdict, ratio=ratio))

    speed("write JSON-like agent state", "write_json", TARGETS["write_json"])
    speed("write incompressible", "write_random")
    speed("read JSON, all fragments", "read_json_all")
    speed("read JSON, 4 backends lost", "read_json_4_lost", TARGETS["read_4_lost"])
    speed("read incompressible, 4 backends lost", "read_random_4_lost")
    speed("scrub (fragment bytes re-hashed)", "scrub_fragment_mb_s")
    ok = "ok" if r["put_p99_ms"] <= TARGETS["small_put_p99_ms"] else "MISSED"
    print(row("21 KB put p50", r["put_p50_ms"], "ms"))
    print(row("21 KB put p99", r["put_p99_ms"], "ms", None, f"target <= 5 ms: {ok}"))
    print(f"  {'disk floor of a put p50 / p99':38} {r['disk_p50_ms']:7.1f} / {r['disk_p99_ms']:.1f} ms   "
          f"put vs floor {r['put_p50_ms'] / r['disk_p50_ms']:.2f}x / {r['put_p99_ms'] / r['disk_p99_ms']:.2f}x")
    print(row("21 KB get p50", r["get_p50_ms"], "ms"))
    print(row("21 KB get p99", r["get_p99_ms"], "ms"))
    rep = r["repair"]
    print(row(f"repair lost backend ({rep['held_mib']:.0f} MiB held)", rep["seconds"], "s"))
    print(row("repair rebuild rate", rep["rebuilt_mb_s"], "MB/s"))
    print(row("repair time per GiB held (scaled)", rep["seconds_per_gib"], "s"))
    opened = r["index_open"]
    print(f"  {'open a backend: index read per fragment':38} {opened['us_per_fragment']:9.2f} µs    "
          f"({opened['fragments']} fragments; {opened['ratio']:.2f}x reading the index files into a dict, "
          f"{opened['floor_us_per_fragment']:.2f} µs)")
    for count, v in r["by_versions"].items():
        print(f"  at {count:>5} versions: put {v['put_ms']:.1f} ms, latest {v['latest_ms']:.1f} ms, "
              f"latest after a restart {v['latest_after_restart_ms']:.1f} ms")


if __name__ == "__main__":
    main()
