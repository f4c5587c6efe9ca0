"""The L3 overlay for real: three network namespaces chained A–B–C (no A–C link), a TUN device in each,
and A fetches an HTTP server's /healthz in C at C's overlay address."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hero.net.address import load_or_create_key
from tests.conftest import ROOT

NS = [f"hero{os.getpid()}{x}" for x in "abc"]
HTTP_PORT = 18080


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def can_make_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    probe = f"heroprobe{os.getpid()}"
    result = sh("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create network namespaces here: {result.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


pytestmark = pytest.mark.skipif(bool(reason := can_make_namespaces()), reason=reason or "")


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[dict[str, object]]:
    a, b, c = NS
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ns in NS:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "ab0", "netns", a, "type", "veth", "peer", "name", "ba0", "netns", b)
        sh("ip", "link", "add", "bc0", "netns", b, "type", "veth", "peer", "name", "cb0", "netns", c)
        for ns, dev, addr in ((a, "ab0", "10.213.1.1/24"), (b, "ba0", "10.213.1.2/24"),
                              (b, "bc0", "10.213.2.1/24"), (c, "cb0", "10.213.2.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        peers = {a: ["tcp://10.213.1.2:9651"], b: [], c: ["tcp://10.213.2.1:9651"]}
        addresses = {}
        for ns in NS:
            key = tmp_path / f"{ns}.key"
            addresses[ns] = str(load_or_create_key(key).address)
            args = ["ip", "netns", "exec", ns, sys.executable, "-m", "hero.cli", "net", "up", "--key-file", str(key),
                    "--tcp-listen-port", "9651", "--api-addr", "127.0.0.1:8989", "--tun-name", "hero0"]
            if peers[ns]:
                args += ["--peers", *peers[ns]]
            procs.append(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        server = tmp_path / "www"
        server.mkdir()
        (server / "healthz").write_text('{"status": "ok"}')
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", c, sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "::",
             "--directory", str(server)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield {"addresses": addresses, "procs": procs}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for ns in NS:
            sh("ip", "netns", "del", ns, check=False)


def fetch(ns: str, url: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys, urllib.request; "
            "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())")
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", code, url, check=False)


def test_a_fetches_healthz_from_c_over_the_overlay(chain: dict[str, object]) -> None:
    a, _, c = NS
    addresses = chain["addresses"]
    assert isinstance(addresses, dict)
    tun = sh("ip", "-n", c, "-6", "addr", "show", "dev", "hero0", check=False)
    deadline = time.monotonic() + 20
    while addresses[c] not in tun.stdout and time.monotonic() < deadline:
        time.sleep(0.1)
        tun = sh("ip", "-n", c, "-6", "addr", "show", "dev", "hero0", check=False)
    assert addresses[c] in tun.stdout, tun.stdout + tun.stderr
    assert sh("ip", "-n", a, "route", "get", "10.213.2.2", check=False).returncode != 0  # no A–C link
    url = f"http://[{addresses[c]}]:{HTTP_PORT}/healthz"
    last = None
    while time.monotonic() < deadline:
        last = fetch(a, url)
        if last.returncode == 0:
            break
        time.sleep(0.2)
    assert last is not None and last.returncode == 0, last.stderr if last else ""
    assert '"status": "ok"' in last.stdout
