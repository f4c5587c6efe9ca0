"""`hero cluster`: make a cluster's key, start Ray with its token, see the cluster's nodes.

```
hero cluster init --out FILE                                  # the cluster's secret (0600; never overwritten)
hero cluster ray-start --cluster-key FILE (--head [--port P] | --address HOST:PORT) [--profile NAME] [--block]
hero cluster status --ray HOST:PORT [--cluster-key FILE] [--json]
```
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hero.cluster.key import ClusterKey
from hero.config import DEFAULT_DATA
from hero.errors import UsageError


def add_cluster_parser(sub: Any) -> None:
    parent = sub.add_parser("cluster", help="run nodes as one cluster (Ray): its key, Ray, its nodes")
    cluster = parent.add_subparsers(parser_class=type(parent), metavar="ACTION", required=True)

    init = cluster.add_parser("init", help="make a cluster key: every node of the cluster is started with it")
    init.add_argument("--out", type=Path, required=True, help="the key file to create (0600)")
    init.add_argument("--json", action="store_true", help="print JSON")
    init.set_defaults(func=cmd_init)

    start = cluster.add_parser("ray-start", help="start a Ray node (head or worker) with the cluster's token")
    _key_arg(start)
    where = start.add_mutually_exclusive_group(required=True)
    where.add_argument("--head", action="store_true", help="start the cluster's head")
    where.add_argument("--address", metavar="HOST:PORT", help="join the cluster whose head is there")
    start.add_argument("--port", type=int, default=6379, help="the head's port (default 6379)")
    start.add_argument("--profile", help="the machine's hardware profile: the node offers its power budget "
                       "(hero_watts) and its name (hero_profile:NAME); default: the default profile")
    start.add_argument("--block", action="store_true", help="stay in the foreground until stopped")
    start.add_argument("ray_args", nargs=argparse.REMAINDER, help="after --: more `ray start` arguments")
    start.set_defaults(func=cmd_ray_start)

    status = cluster.add_parser("status", help="the cluster's nodes, their agents and watts")
    status.add_argument("--ray", required=True, metavar="HOST:PORT", help="the Ray head")
    _key_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def _key_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster-key", metavar="FILE", help="the cluster key (default: HERO_CLUSTER_KEY, or the "
                        "cluster_key setting of --data)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data directory whose settings name the key")


def cluster_key(args: argparse.Namespace) -> ClusterKey:
    """The key given by flag, else by the data dir's settings (hero.toml, HERO_CLUSTER_KEY)."""
    spec = args.cluster_key
    if not spec:
        from hero.config import load_config

        spec = getattr(load_config(args.data), "cluster_key", "") or os.environ.get("HERO_CLUSTER_KEY", "")
    if not spec:
        raise UsageError("no cluster key: pass --cluster-key FILE or set HERO_CLUSTER_KEY (make one with hero "
                         "cluster init --out FILE)")
    return ClusterKey.load(spec)


def cmd_init(args: argparse.Namespace) -> int:
    key = ClusterKey.generate()
    key.write(args.out)
    out = {"key_file": str(args.out), "cluster_id": key.cluster_id}
    print(json.dumps(out) if args.json else (
        f"cluster key written to {args.out} (keep it secret: it reads every agent's data)\n"
        f"cluster id {key.cluster_id}  (fragment servers: hero storage serve --trust {key.cluster_id})"
    ))
    return 0


def cmd_ray_start(args: argparse.Namespace) -> int:
    from hero.cluster.connect import auth_env

    key = cluster_key(args)
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        raise UsageError("the `ray` command is not installed (pip install ray)")
    command = [ray, "start", "--disable-usage-stats"]
    command += ["--head", f"--port={args.port}"] if args.head else [f"--address={args.address}"]
    from hero.cluster.resources import node_resources
    from hero.power.profiles import load_profile

    command.append("--resources=" + json.dumps(node_resources(load_profile(args.profile))))
    if args.block:
        command.append("--block")
    command += [a for a in args.ray_args if a != "--"]
    return subprocess.call(command, env={**os.environ, **auth_env(key)})


def cmd_status(args: argparse.Namespace) -> int:
    from hero.cluster.connect import connect, disconnect
    from hero.cluster.status import cluster_nodes

    key = cluster_key(args)
    connect(args.ray, key)
    try:
        nodes = cluster_nodes(key)
    finally:
        disconnect()
    if args.json:
        print(json.dumps({"nodes": nodes}))
    else:
        lines = [f"{n['node_id'][:16]}…  {n.get('url') or '-':28} {len(n['agents']):4d} agents  "
                 f"{n.get('watts', 0.0):6.1f} W" for n in nodes]
        print("\n".join(lines) or "no Hero node in this cluster")
    return 0
