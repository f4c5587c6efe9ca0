"""Overlay figures, each beside its baseline from the same run:

- the node's own message path: 1 MiB messages over 1 and 2 hops (an in-process sender, `hero net up`
  processes as relay and receiver), until the receiver has acknowledged the whole message; CPU per MiB
  in each process; beside a plain loopback TCP copy of the same bytes;
- the same through Mycelium's REST API (base64 in JSON over HTTP on both ends);
- small-message round trips over 1 and 2 hops, and reroute after SIGKILL of the next hop (real processes);
- TCP through the TUN face between network namespaces beside the bare veth, and UDP round trips over
  0, 1 and 2 overlay hops: what each hop adds (skipped with the reason where namespaces cannot be made);
- handshakes: hybrid ML-KEM-768 vs X25519 alone, for links (XX) and end-to-end sessions (KK);
- a simulated 200-node mesh: convergence, stretch, reroute, control traffic per node per minute.

    .venv/bin/python bench/net_bench.py [--runs 10] [--nodes 200] [--skip tun,api,...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hero.identity import overlay_address
from hero.net.address import Identity, load_or_create_key
from hero.net.handshake import Handshake
from hero.net.node import OverlayConfig, OverlayNode
from hero.net.sim import Simulation
from tests.conftest import free_port
from tests.net import netns
from tests.net.helpers import Proc, start_node, wait_api, wait_routes

MIB = 1 << 20


def plain_tcp_copy(nbytes: int) -> float:
    """MB/s of a plain loopback TCP socket copy of the same bytes (sender and receiver threads)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    data = bytes(nbytes)

    def sink() -> None:
        conn, _ = srv.accept()
        got = 0
        while got < nbytes:
            got += len(conn.recv(1 << 20))
        conn.sendall(b"k")
        conn.close()

    t = threading.Thread(target=sink)
    t.start()
    start = time.perf_counter()
    c = socket.create_connection(srv.getsockname())
    c.sendall(data)
    c.recv(1)
    elapsed = time.perf_counter() - start
    c.close()
    t.join()
    srv.close()
    return nbytes / elapsed / 1e6


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(check: Callable[[], bool], limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "the overlay did not converge"
        await asyncio.sleep(0.01)


def chain_of_nodes(tmp: Path, hops: int, tag: str) -> list[Proc]:
    """`hops` `hero net up` processes in a line: each dials the one before."""
    ports = [free_port() for _ in range(hops)]
    procs = [start_node(tmp, f"{tag}{i}", [ports[i - 1]] if i else [], port=ports[i]) for i in range(hops)]
    for proc in procs:
        wait_api(proc)
    return procs


async def message_path(tmp: Path, hops: int, runs: int) -> dict[str, Any]:
    """1 MiB from an in-process node to the far end of `hops` processes, until its DONE is acknowledged."""
    procs = chain_of_nodes(tmp, hops, f"m{hops}_")
    node = OverlayNode(Identity.generate(), OverlayConfig(listen_host="127.0.0.1", tcp_listen_port=0,
                                                          peers=(f"tcp://127.0.0.1:{procs[0].port}",)))
    await node.start()
    try:
        dst = bytes.fromhex(procs[-1].public)
        await until(lambda: node.router.next_hop(overlay_address(dst).packed) is not None)
        payload = os.urandom(MIB)
        for _ in range(3):  # sessions, buffers and caches warm
            assert await node.messages.push(dst, b"", payload).wait() == "received"
        rates, pings = [], []
        cpu0, others0, wall0 = time.process_time(), [cpu_s(p.proc.pid) for p in procs], time.perf_counter()
        for _ in range(runs):
            start = time.perf_counter()
            assert await node.messages.push(dst, b"", payload).wait() == "received"
            rates.append(MIB / (time.perf_counter() - start) / 1e6)
        cpu1, others1, wall1 = time.process_time(), [cpu_s(p.proc.pid) for p in procs], time.perf_counter()
        for _ in range(max(20, runs)):
            start = time.perf_counter()
            assert await node.messages.push(dst, b"", b"x").wait() == "received"
            pings.append((time.perf_counter() - start) * 1000)
        return {
            "best_MBps": max(rates), "median_MBps": statistics.median(rates),
            "cpu_ms_per_MiB": [round((cpu1 - cpu0) * 1000 / runs, 2)]
            + [round((b - a) * 1000 / runs, 2) for a, b in zip(others0, others1, strict=True)],
            "wall_ms_per_MiB": (wall1 - wall0) * 1000 / runs,
            "small_message_rtt_ms": statistics.median(pings),
        }
    finally:
        await node.aclose()
        for proc in procs:
            proc.stop()


def api_path(tmp: Path, hops: int, runs: int) -> dict[str, Any]:
    """POST 1 MiB to the first node's API while a long-poll GET waits on the last one; until the GET answers."""
    procs = chain_of_nodes(tmp, hops + 1, f"a{hops}_")
    src, dst = procs[0], procs[-1]
    try:
        wait_routes(src, hops)
        payload = base64.b64encode(os.urandom(MIB)).decode()
        rates = []
        with httpx.Client(timeout=60) as sender, httpx.Client(timeout=60) as receiver:

            def one() -> float:
                got: list[httpx.Response] = []
                poll = threading.Thread(target=lambda: got.append(
                    receiver.get(dst.api + "/api/v1/messages", params={"timeout": 30})))
                poll.start()
                time.sleep(0.02)
                start = time.perf_counter()
                r = sender.post(src.api + "/api/v1/messages", json={"dst": {"pk": dst.public}, "payload": payload})
                assert r.status_code == 201, r.text
                poll.join()
                assert got[0].status_code == 200 and len(got[0].content) > MIB
                return time.perf_counter() - start

            one()
            cpu0 = [cpu_s(p.proc.pid) for p in procs]
            for _ in range(runs):
                rates.append(MIB / one() / 1e6)
            cpu1 = [cpu_s(p.proc.pid) for p in procs]
        return {"best_MBps": max(rates), "median_MBps": statistics.median(rates),
                "cpu_ms_per_MiB": [round((b - a) * 1000 / runs, 2) for a, b in zip(cpu0, cpu1, strict=True)]}
    finally:
        for proc in procs:
            proc.stop()


async def reroute(tmp: Path) -> float:
    """A ring of an in-process node and 3 processes; SIGKILL our next hop to the far node; seconds until a
    message pushed after the kill is acknowledged by the far node."""
    ports = [free_port() for _ in range(3)]
    # b dials c, d dials c; we dial b and d: the far node c is two hops away either way
    c = start_node(tmp, "rc", [], port=ports[1])
    b = start_node(tmp, "rb", [ports[1]], port=ports[0])
    d = start_node(tmp, "rd", [ports[1]], port=ports[2])
    node = OverlayNode(Identity.generate(), OverlayConfig(
        listen_host="127.0.0.1", tcp_listen_port=0, peers=(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[2]}")))
    await node.start()
    try:
        for proc in (b, c, d):
            wait_api(proc)
        far = bytes.fromhex(c.public)
        await until(lambda: len(node.router.selected) == 3 and bool(node.router.table(fallback=True)))
        assert await node.messages.push(far, b"", b"before").wait() == "received"
        hop = node.router.next_hop(overlay_address(far).packed)
        victim = b if str(hop).endswith(f":{ports[0]}") else d
        killed = time.perf_counter()
        victim.proc.send_signal(signal.SIGKILL)
        assert await node.messages.push(far, b"", b"after").wait() == "received"
        return time.perf_counter() - killed
    finally:
        await node.aclose()
        for proc in (b, c, d):
            proc.kill()


SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        n += len(b)
    c.sendall(str(n).encode()); c.close()
"""
SEND = r"""
import socket, sys, time
host, port, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = bytes(1 << 20)
rates = []
for _ in range(runs):
    c = socket.create_connection((host, port), timeout=30)
    t = time.perf_counter()
    left = n
    while left > 0:
        c.sendall(data[:min(left, len(data))]); left -= min(left, len(data))
    c.shutdown(socket.SHUT_WR)
    assert int(c.recv(100)) == n
    rates.append(n / (time.perf_counter() - t) / 1e6)
print(max(rates))
"""
ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048); s.sendto(d, a)
"""
PING = r"""
import socket, sys, time, statistics
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
rtts = []
for i in range(n):
    t = time.perf_counter(); s.sendto(b"x" * 64, (host, port))
    try:
        s.recvfrom(2048); rtts.append((time.perf_counter() - t) * 1e3)
    except TimeoutError: pass
    time.sleep(0.002)
print(statistics.median(rtts))
"""


def tun_path(tmp: Path, runs: int) -> dict[str, Any] | str:
    """Namespaces A–B–C with a `hero net up` (TUN) in each: TCP and UDP round trips over veth and overlay."""
    reason = netns.unavailable()
    if reason:
        return f"skipped: {reason}"
    with netns.chain(3, "bench") as chain:
        addresses = []
        for k in range(3):
            key = tmp / f"tun{k}.key"
            addresses.append(str(load_or_create_key(key).address))
            chain.overlay_node(k, key, peers=[f"tcp://{chain.right_ip(k - 1)}:9651"] if k else [])
        for k in (1, 2):
            for program, port in ((SINK, "5001"), (ECHO, "5002")):
                assert chain.spawn(k, sys.executable, "-c", program, "::", port).stdout.readline()  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while chain.python(0, PING, addresses[2], "5002", "1").returncode != 0:
            assert time.monotonic() < deadline, "the overlay did not come up in the namespaces"
            time.sleep(0.2)

        def tcp(host: str, mib: int) -> float:
            result = chain.python(0, SEND, host, "5001", str(mib << 20), str(runs))
            assert result.returncode == 0, result.stderr
            return float(result.stdout)

        def rtt(host: str) -> float:
            return float(chain.python(0, PING, host, "5002", "300").stdout)

        out: dict[str, Any] = {
            "veth_tcp_MBps": tcp(chain.left_ip(1), 256),
            "overlay_1hop_tcp_MBps": tcp(addresses[1], 64),
            "overlay_2hop_tcp_MBps": tcp(addresses[2], 64),
            "veth_rtt_ms": rtt(chain.left_ip(1)),
            "overlay_1hop_rtt_ms": rtt(addresses[1]),
            "overlay_2hop_rtt_ms": rtt(addresses[2]),
        }
        out["added_one_way_ms_first_hop"] = (out["overlay_1hop_rtt_ms"] - out["veth_rtt_ms"]) / 2
        out["added_one_way_ms_per_relay_hop"] = (out["overlay_2hop_rtt_ms"] - out["overlay_1hop_rtt_ms"]) / 2
        return out


def handshakes(pattern: str, runs: int) -> float:
    a, b = Identity.generate(), Identity.generate()
    best = float("inf")
    known = pattern.startswith("KK")
    for _ in range(runs):
        start = time.perf_counter()
        i = Handshake(pattern, initiator=True, static_secret=a.secret, remote_static=b.public if known else None)
        r = Handshake(pattern, initiator=False, static_secret=b.secret, remote_static=a.public if known else None)
        while not (i.done and r.done):
            sender, receiver = (i, r) if i.my_turn else (r, i)
            receiver.read(sender.write())
        best = min(best, time.perf_counter() - start)
    return best * 1000


def simulated(n: int) -> dict[str, float]:
    sim = Simulation.random_mesh(n, seed=11)
    sim.start()
    converged = sim.run_until(60, stop=sim.converged)
    sim.run_until(converged + 10)
    mean, worst = sim.stretch(list(range(0, n, max(1, n // 20))))
    packets, hellos, updates = sim.stats.packets, sim.stats.hello_tlvs, sim.stats.update_tlvs
    minutes = 3
    sim.run_until(sim.now + 60 * minutes)
    steady = {
        "control_packets_per_node_min": (sim.stats.packets - packets) / n / minutes,
        "hello_ihu_tlvs_per_node_min": (sim.stats.hello_tlvs - hellos) / n / minutes,
        "update_tlvs_per_node_min": (sim.stats.update_tlvs - updates) / n / minutes,
        "seqno_bumps": float(sum(r.stats.seqno_bumps for r in sim.routers)),
    }
    rng = random.Random(2)
    reroutes = []
    for silent in (False, True):
        for _ in range(5):
            src, dst = rng.sample(range(n), 2)
            path = sim.path(src, dst)
            assert path is not None
            cut = sim.now
            sim.cut(path[0], path[1], silent=silent)
            sim.run_until(cut + 10, stop=lambda s=src, d=dst: sim.path(s, d) is not None)
            reroutes.append((silent, sim.now - cut))
            sim.run_until(sim.now + 3)
    return {
        "converged_s": converged, "stretch_mean": mean, "stretch_max": worst, **steady,
        "reroute_hard_max_s": max(t for s, t in reroutes if not s),
        "reroute_silent_max_s": max(t for s, t in reroutes if s),
    }


def show(name: str, figures: dict[str, Any] | str) -> None:
    if isinstance(figures, str):
        print(f"{name}: {figures}", flush=True)
        return
    parts = [f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()]
    print(f"{name}: " + ", ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated: handshake,message,api,reroute,tun,sim")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    tmp = Path(tempfile.mkdtemp())
    if "handshake" not in skip:
        show("handshake ms (both sides, best of 50)", {
            "link XXhfs+ML-KEM-768": handshakes("XXhfs", 50), "link XX X25519": handshakes("XX", 50),
            "session KKhfs+ML-KEM-768": handshakes("KKhfs", 50), "session KK X25519": handshakes("KK", 50)})
    if "message" not in skip:
        tcp = max(plain_tcp_copy(MIB) for _ in range(args.runs))
        show("plain loopback TCP copy of 1 MiB, best", {"MBps": tcp})
        for hops in (1, 2):
            figures = asyncio.run(message_path(tmp, hops, args.runs))
            figures["best_ratio_to_tcp"] = figures["best_MBps"] / tcp
            show(f"message path, 1 MiB, {hops} hop(s)", figures)
    if "api" not in skip:
        for hops in (1, 2):
            show(f"REST API path, 1 MiB, {hops} hop(s)", api_path(tmp, hops, args.runs))
    if "reroute" not in skip:
        show("real reroute after SIGKILL of the next hop", {"s": asyncio.run(reroute(tmp))})
    if "tun" not in skip:
        show("TUN face between namespaces", tun_path(tmp, 3))
    if "sim" not in skip:
        show(f"simulated {args.nodes} nodes", simulated(args.nodes))


if __name__ == "__main__":
    main()
