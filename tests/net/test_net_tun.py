"""The L3 overlay for real: three network namespaces chained A–B–C (no A–C link), a TUN device in each,
and A fetches the Hero web app's /healthz from `hero up` in C at C's overlay address (C's web app keeps
its default loopback `--host`: it listens on the overlay address as well)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.net import netns

pytestmark = pytest.mark.skipif(bool(reason := netns.unavailable()), reason=reason or "")

GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
"""


def wait_for(chain: netns.Chain, k: int, url: str, limit_s: float = 30.0) -> str:
    """GET `url` from namespace k until it answers; its body."""
    deadline = time.monotonic() + limit_s
    while True:
        result = chain.python(k, GET, url)
        if result.returncode == 0:
            return result.stdout
        for proc in chain.procs:
            if proc.poll() is not None and proc.returncode:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{proc.args} exited {proc.returncode}: {stderr[-2000:]}")
        assert time.monotonic() < deadline, f"{url} from namespace {k}: {result.stderr.strip()[-500:]}"
        time.sleep(0.2)


def test_a_fetches_the_hero_web_app_in_c_over_the_overlay(tmp_path: Path) -> None:
    with netns.chain(3) as chain:
        keys = [tmp_path / f"{k}.key" for k in range(2)]
        # B (the relay) first, so A and C find it listening instead of backing off
        chain.overlay_node(1, keys[1], peers=[])
        wait_for(chain, 1, "http://127.0.0.1:8989/api/v1/admin")
        chain.overlay_node(0, keys[0], peers=[f"tcp://{chain.left_ip(1)}:9651"])
        data = tmp_path / "c-data"
        # the web app listens on loopback (the default) and, because the TUN holds it, on the overlay address
        chain.spawn(2, sys.executable, "-m", "hero.cli", "up", "--data", str(data), "--port", "8080",
                    "--tcp-listen-port", "9651", "--api-addr", "127.0.0.1:8989",
                    "--peers", f"tcp://{chain.right_ip(1)}:9651")
        c_address = json.loads(wait_for(chain, 2, "http://127.0.0.1:8989/api/v1/admin"))["nodeIp"]
        assert chain.python(0, "import socket; socket.create_connection(('10.213.2.2', 8080), timeout=1)"
                            ).returncode != 0  # no A–C link: only the overlay joins them
        health = json.loads(wait_for(chain, 0, f"http://[{c_address}]:8080/healthz"))
        assert health["status"] == "ok" and "model_loaded" in health  # the Hero app, over two overlay hops
