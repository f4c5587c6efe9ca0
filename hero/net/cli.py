"""`hero net up` (a standalone overlay node, with Mycelium's flags) and `hero net inspect`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

from hero.config import DEFAULT_DATA
from hero.errors import UsageError
from hero.net.address import load_or_create_key
from hero.net.service import OverlayService, OverlaySettings
from hero.net.tun import MAX_MTU, MIN_MTU, MTU


def add_overlay_flags(parser: argparse.ArgumentParser) -> None:
    """Mycelium's own flags; `hero up` takes them too."""
    parser.add_argument("--key-file", type=Path, help="raw 32-byte X25519 secret, created if missing "
                        "(default DATA/keys/node.x25519)")
    parser.add_argument("--peers", nargs="*", default=None, metavar="tcp://HOST:PORT", help="static peers")
    parser.add_argument("--tcp-listen-port", type=int, default=None, help="overlay TCP port (default 9651)")
    parser.add_argument("--api-addr", default=None, help="Mycelium message API HOST:PORT (default 127.0.0.1:8989)")
    parser.add_argument("--no-tun", action="store_true", help="no TUN device: the message overlay only")
    parser.add_argument("--tun-name", default=None, help="TUN device name (default hero0)")
    parser.add_argument("--tun-mtu", type=int, default=None, help=f"TUN MTU, {MIN_MTU}..{MAX_MTU} (default {MTU})")
    parser.add_argument("--hello-interval", type=float, default=None,
                        help="seconds between hellos; a peer is dead after 3 missed (default 0.5)")


def overlay_settings(args: argparse.Namespace, base: OverlaySettings | None = None) -> OverlaySettings:
    base = base or OverlaySettings()
    port = base.tcp_listen_port if args.tcp_listen_port is None else args.tcp_listen_port
    if not 0 <= port < 65536:
        raise UsageError("--tcp-listen-port must be 0..65535")
    hello = base.hello_interval_s if args.hello_interval is None else args.hello_interval
    if hello <= 0:
        raise UsageError("--hello-interval must be > 0")
    mtu = base.tun_mtu if args.tun_mtu is None else args.tun_mtu
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise UsageError(f"--tun-mtu must be {MIN_MTU}..{MAX_MTU}")
    return OverlaySettings(
        peers=tuple(args.peers) if args.peers is not None else base.peers,
        tcp_listen_port=port,
        listen_host=base.listen_host,
        api_addr=args.api_addr or base.api_addr,
        tun=base.tun and not args.no_tun,
        tun_name=args.tun_name or base.tun_name,
        tun_mtu=mtu,
        hello_interval_s=hello,
        dead_after_s=3 * hello,
    )


def add_net_parser(sub: Any) -> None:
    parent = sub.add_parser("net", help="the Mycelium-compatible overlay")
    net = parent.add_subparsers(parser_class=type(parent), metavar="ACTION", required=True)
    up = net.add_parser("up", help="run a standalone overlay node (Mycelium's flags)")
    up.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data directory for the default key file")
    add_overlay_flags(up)
    up.add_argument("-v", "--verbose", action="store_true")
    up.set_defaults(func=cmd_net_up)
    inspect = net.add_parser("inspect", help="print the public key and overlay address of a key file")
    inspect.add_argument("--key-file", type=Path, required=True)
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_net_inspect)


def key_path(args: argparse.Namespace) -> Path:
    return args.key_file or Path(args.data) / "keys" / "node.x25519"


def cmd_net_inspect(args: argparse.Namespace) -> int:
    if not args.key_file.exists():
        raise UsageError(f"no key file at {args.key_file}")
    identity = load_or_create_key(args.key_file)
    out = {"publicKey": identity.public.hex(), "address": str(identity.address)}
    print(json.dumps(out) if args.json else f"Public key: {out['publicKey']}\nAddress: {out['address']}")
    return 0


def cmd_net_up(args: argparse.Namespace) -> int:
    settings = overlay_settings(args)
    identity = load_or_create_key(key_path(args))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_run(identity, settings))
    return 0


async def _run(identity: Any, settings: OverlaySettings) -> None:
    service = OverlayService(identity, settings)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = service.node
    tun = f"tun {service.tun.name}" if service.tun else "no tun"
    print(f"hero net: {node.identity.address} · pubkey {node.identity.public.hex()} · tcp {node.port} · "
          f"api {service.api_port} · {tun}", flush=True)
    try:
        await stop.wait()
    finally:
        await service.aclose()
