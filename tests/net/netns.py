"""Network namespaces chained by veth pairs (A–B–C…, no link past a neighbour), for L3 tests and benchmarks.

Namespace k and k+1 share the /24 10.213.(k+1).0: k holds .1, k+1 holds .2.
Needs root, iproute2 and /dev/net/tun; `unavailable()` says why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
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


@dataclass
class Chain:
    names: list[str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def left_ip(self, k: int) -> str:
        """Namespace k's address on its link to k-1."""
        return f"10.213.{k}.2"

    def right_ip(self, k: int) -> str:
        """Namespace k's address on its link to k+1."""
        return f"10.213.{k + 1}.1"

    def spawn(self, k: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A process in namespace k (stopped when the chain is torn down)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[k], *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def python(self, k: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a short Python program in namespace k and wait for it."""
        return subprocess.run(["ip", "netns", "exec", self.names[k], sys.executable, "-c", code, *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    def overlay_node(self, k: int, key: Path, *, peers: list[str], extra: tuple[str, ...] = ()
                     ) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "hero.cli", "net", "up", "--key-file", str(key), "--tcp-listen-port", "9651",
                "--api-addr", "127.0.0.1:8989", "--tun-name", "hero0", *extra]
        if peers:
            args += ["--peers", *peers]
        return self.spawn(k, *args)


@contextmanager
def chain(count: int, tag: str = "") -> Iterator[Chain]:
    names = [f"hero{os.getpid()}{tag}{chr(97 + k)}" for k in range(count)]
    made = Chain(names)
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for k in range(count - 1):
            left, right = f"v{k}r", f"v{k + 1}l"
            sh("ip", "link", "add", left, "netns", names[k], "type", "veth", "peer", "name", right, "netns",
               names[k + 1])
            for ns, dev, addr in ((names[k], left, made.right_ip(k)), (names[k + 1], right, made.left_ip(k + 1))):
                sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
        yield made
    finally:
        for proc in made.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for ns in names:
            sh("ip", "netns", "del", ns, check=False)
