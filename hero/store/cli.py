"""`hero storage …`: put, get, versions, keys, status, scrub, gc, migrate and the fragment server.

Each handler opens the node's QSS on `--data` (keys from DATA/keys, backends
from DATA/storage.toml or the 20 default directories), runs one operation
and closes it, so it works beside a running node on the same backends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from hero.config import DEFAULT_DATA
from hero.errors import NotFound, UsageError
from hero.identity import NodeKeys
from hero.store.damage import describe
from hero.store.gc import ORPHAN_GRACE_S
from hero.store.qss import QSS, open_qss

T = TypeVar("T")


def add_storage_parser(subparsers: Any) -> None:
    storage = subparsers.add_parser("storage", help="QSS: erasure-coded, encrypted, self-healing storage")
    sub = storage.add_subparsers(parser_class=type(storage), metavar="ACTION", required=True)

    put = sub.add_parser("put", help="store FILE (or - for stdin) as the next version of KEY")
    put.add_argument("key")
    put.add_argument("file")
    put.add_argument("--epoch", type=int, help="lease epoch to write with (default: the head's)")
    _common(put)
    put.set_defaults(func=cmd_put)

    get = sub.add_parser("get", help="write a version of KEY to stdout")
    get.add_argument("key")
    get.add_argument("--version", type=int, help="version number (default: the latest)")
    get.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    _common(get, json_flag=False)
    get.set_defaults(func=cmd_get)

    versions = sub.add_parser("versions", help="list the versions of KEY")
    versions.add_argument("key")
    _common(versions)
    versions.set_defaults(func=cmd_versions)

    keys = sub.add_parser("keys", help="list stored keys")
    keys.add_argument("--prefix", default="")
    _common(keys)
    keys.set_defaults(func=cmd_keys)

    status = sub.add_parser("status", help="backends, locations, fragment counts, last scrub, repairs")
    _common(status)
    status.set_defaults(func=cmd_status)

    scrub = sub.add_parser("scrub", help="re-hash every fragment now and rebuild what is lost")
    scrub.add_argument("--rate", type=float, help="MB/s limit (default: as fast as possible)")
    _common(scrub)
    scrub.set_defaults(func=cmd_scrub)

    gc = sub.add_parser("gc", help="drop all but the newest N versions of every object")
    gc.add_argument("--keep", type=int, required=True)
    gc.add_argument("--orphan-grace", dest="orphan_grace_s", type=float, default=ORPHAN_GRACE_S,
                    help="seconds an unreferenced fragment must be old before it is removed (default 3600)")
    _common(gc)
    gc.set_defaults(func=cmd_gc)

    migrate = sub.add_parser("migrate", help="cut every agent's history still kept in one object into segments")
    _common(migrate)
    migrate.set_defaults(func=cmd_migrate)

    serve = sub.add_parser("serve", help="run a fragment server other nodes can use as a backend")
    serve.add_argument("--dir", type=Path, required=True, help="where fragments are kept")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--location", required=True, help="location tag of this server (site, rack, …)")
    serve.add_argument("--trust", action="append", default=[], metavar="NODE_ID",
                       help="a node id (64 hex) allowed to use this server; repeatable")
    serve.add_argument("--trust-file", type=Path, help="a file of trusted node ids, one per line")
    serve.add_argument("--trust-data", type=Path, help="trust the node whose data directory this is")
    serve.add_argument("--no-fsync", action="store_true", help="do not fsync (tests, benchmarks)")
    serve.set_defaults(func=cmd_serve)


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data directory (default ./hero-data)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _run(args: argparse.Namespace, op: Callable[[QSS], Awaitable[T]]) -> T:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="hero: %(message)s", stream=sys.stderr)

    async def main() -> T:
        qss = await open_qss(args.data, NodeKeys.load_or_create(args.data))
        try:
            return await op(qss)
        finally:
            await qss.aclose()

    return asyncio.run(main())


def _bar(total: int, label: str) -> tqdm:
    """Bytes done of `total` on stderr, shown only when stdout is a terminal (a person is watching)."""
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, disable=not sys.stdout.isatty())


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text)


def cmd_put(args: argparse.Namespace) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None

    async def op(qss: QSS) -> dict[str, Any]:
        epoch = args.epoch
        if epoch is None:
            known = await qss.versions(args.key)
            epoch = known[-1].epoch if known else 0
        bar = _bar(len(data), "put")
        try:
            report = await qss.put_report(args.key, data, epoch=epoch, progress=bar.update)
        finally:
            bar.close()
        return report.to_json()

    out = _run(args, op)
    skipped = "".join(f"\n  skipped {name}: {why}" for name, why in out["skipped"].items())
    _emit(args, out, f"{out['key']} version {out['version']}: {out['size']} bytes, "
                     f"{out['fragments']}/{out['expected']} fragments{skipped}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    async def op(qss: QSS) -> bytes:
        if args.output is None:  # stdout carries the data: no bar
            return await qss.get(args.key, args.version)
        sizes = {v.version: v.size for v in await qss.versions(args.key)}
        bar = _bar(sizes.get(args.version or max(sizes, default=0), 0), "get")
        try:
            return await qss.get(args.key, args.version, progress=bar.update)
        finally:
            bar.close()

    data = _run(args, op)
    if args.output is not None:
        try:
            args.output.write_bytes(data)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    async def op(qss: QSS) -> list[dict[str, Any]]:
        return [v.__dict__ for v in await qss.versions(args.key)]

    out = _run(args, op)
    if not out:
        raise NotFound(f"no object {args.key!r}")  # as `get` says
    lines = [f"{v['version']:>6}  {v['size']:>12} bytes  epoch {v['epoch']}  {_time(v['created'])}" for v in out]
    _emit(args, out, "\n".join(lines))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    async def op(qss: QSS) -> list[str]:
        return await qss.keys(args.prefix)

    out = _run(args, op)
    _emit(args, out, "\n".join(out) or "no keys")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    async def op(qss: QSS) -> dict[str, Any]:
        return await qss.status()

    out = _run(args, op)
    lines = [f"QSS k={out['k']} m={out['m']} {out['codec']} · {out['up']}/{len(out['backends'])} backends up"]
    for b in out["backends"]:
        count = "-" if b["fragments"] is None else b["fragments"]
        lines.append(f"  {b['name']:14} {b['location']:10} {b['state']:5} {count:>8} fragments"
                     + (f"  ({b['error']})" if b["error"] else ""))
    last = out["scrub"]["last_finished"]
    lines.append(f"last scrub: {_time(last) if last else 'never'} · repaired total {out['repairs']['repaired_total']}"
                 f" · {_count(out['damaged_objects'], 'damaged object')}")
    lines += describe(out["damaged"])
    keep = out["retention"]["keep_versions"]
    lines.append(f"retention: keep the newest {keep} versions (gc every {out['retention']['interval_s']:g} s)" if keep
                 else "retention: every version kept (set keep_versions in storage.toml, or run gc --keep N)")
    for purge in out["purges_pending"]:
        lines.append(f"purge pending since {_time(purge['since'])}: {purge['prefix']} still on "
                     f"{', '.join(purge['backends']) or 'a backend that did not list its objects'} "
                     f"(deleted there when it answers; tried again {purge['attempts']} times so far)")
    _emit(args, out, "\n".join(lines))
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be > 0")

    async def op(qss: QSS) -> dict[str, Any]:
        bar = _bar(sum((b["bytes"] or 0) for b in (await qss.status())["backends"]), "scrub")
        try:
            return await qss.scrub(rate_mb_s=args.rate, progress=bar.update)
        finally:
            bar.close()

    out = _run(args, op)
    lines = [f"checked {out['checked']} fragments of {out['objects']} objects: {out['corrupt']} corrupt, "
             f"{out['missing']} missing, {out['repaired']} repaired, {out['unrecoverable']} unrecoverable"]
    if out["damaged_objects"]:
        lines.append(f"{_count(out['damaged_objects'], 'damaged object')} (cannot be read or rebuilt):")
        lines += describe(out["damaged"])
    _emit(args, out, "\n".join(lines))
    return 0 if out["unrecoverable"] == 0 and out["damaged_objects"] == 0 else 1


def cmd_gc(args: argparse.Namespace) -> int:
    if args.keep < 1:
        raise UsageError("--keep must be >= 1")
    if args.orphan_grace_s < 0:
        raise UsageError("--orphan-grace must be >= 0")

    async def op(qss: QSS) -> dict[str, Any]:
        return await qss.gc(args.keep, orphan_grace_s=args.orphan_grace_s)

    out = _run(args, op)
    _emit(args, out, f"{out['versions_removed']} versions and {out['fragments_removed']} fragments removed "
                     f"from {out['objects']} objects; {out['orphans_removed']} orphan fragments removed")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from hero.chat.migrate import migrate_all  # the layout is chat's; the store only runs the command

    out = _run(args, migrate_all).to_json()
    skipped = "".join(f"\n  skipped {agent[:16]}…: {why}" for agent, why in out["skipped"].items())
    _emit(args, out, f"{len(out['migrated'])} agents migrated ({out['segments_written']} segments written); "
                     f"{out['already']} already in segments{skipped}")
    return 1 if out["skipped"] else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hero.store.backends.directory import DirBackend
    from hero.store.config import NAME
    from hero.store.fragserver import create_app

    trusted = [t.lower() for t in args.trust]
    if args.trust_file is not None:
        try:
            trusted += [line.strip().lower() for line in args.trust_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read {args.trust_file}: {exc.strerror}") from None
    if args.trust_data is not None:
        trusted.append(NodeKeys.load_or_create(args.trust_data).node_id)
    bad = [t for t in trusted if len(t) != 64 or any(c not in "0123456789abcdef" for c in t)]
    if bad:
        raise UsageError(f"not a node id (64 hex): {bad[0]!r}")
    if not trusted:
        raise UsageError("no trusted nodes: pass --trust NODE_ID (see `hero storage status` on the node)")
    if not NAME.match(args.location):
        raise UsageError("--location must be letters, digits, _ . : - (max 64)")
    if not 0 < args.port < 65536:
        raise UsageError("--port must be 1..65535")
    backend = DirBackend(args.dir, name=f"serve-{args.port}", location=args.location, fsync=not args.no_fsync)
    if backend.fault is not None:
        raise UsageError(backend.fault)
    app = create_app(backend, trusted)
    print(f"hero: fragment server on http://{args.host}:{args.port} · {args.dir} · location {args.location} · "
          f"{len(set(trusted))} trusted node(s)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _time(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
