"""Overlay figures: message throughput (1 and 2 hops, separate processes) beside a plain TCP copy,
handshake time (hybrid ML-KEM vs X25519 alone), and a simulated 200-node mesh (convergence, stretch,
reroute, control traffic). Ratios are within one run; best of N.

    .venv/bin/python bench/net_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import base64
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hero.net.address import Identity
from hero.net.handshake import Handshake
from hero.net.sim import Simulation
from tests.net.helpers import start_node, wait_api, wait_routes

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


def message_throughput(src, dst, runs: int) -> float:
    payload = base64.b64encode(random.randbytes(MIB)).decode()
    best = 0.0
    with httpx.Client(timeout=60) as client:
        for _ in range(runs):
            start = time.perf_counter()
            r = client.post(src.api + "/api/v1/messages", json={"dst": {"pk": dst.public}, "payload": payload})
            assert r.status_code == 201
            got = client.get(dst.api + "/api/v1/messages", params={"timeout": 30})
            assert got.status_code == 200
            best = max(best, MIB / (time.perf_counter() - start) / 1e6)
    return best


def handshakes(pattern: str, runs: int) -> float:
    a, b = Identity.generate(), Identity.generate()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        i = Handshake(pattern, initiator=True, static_secret=a.secret)
        r = Handshake(pattern, initiator=False, static_secret=b.secret)
        r.read(i.write())
        i.read(r.write())
        r.read(i.write())
        best = min(best, time.perf_counter() - start)
    return best * 1000


def simulated(n: int) -> dict[str, float]:
    sim = Simulation.random_mesh(n, seed=11)
    sim.start()
    converged = sim.run_until(60, stop=sim.converged)
    sim.run_until(converged + 10)
    mean, worst = sim.stretch(list(range(0, n, max(1, n // 20))))
    before = sim.stats.packets
    hellos, updates = sim.stats.hello_tlvs, sim.stats.update_tlvs
    t0 = sim.now
    sim.run_until(t0 + 60)
    per_node_min = (sim.stats.packets - before) / n
    rng = random.Random(2)
    reroutes = []
    for silent in (False, True):
        for _ in range(5):
            src, dst = rng.sample(range(n), 2)
            path = sim.path(src, dst)
            cut = sim.now
            sim.cut(path[0], path[1], silent=silent)
            sim.run_until(cut + 10, stop=lambda s=src, d=dst: sim.path(s, d) is not None)
            reroutes.append((silent, sim.now - cut))
            sim.run_until(sim.now + 3)
    return {
        "converged_s": converged, "stretch_mean": mean, "stretch_max": worst,
        "control_packets_per_node_min": per_node_min,
        "hello_tlvs_per_node_min": (sim.stats.hello_tlvs - hellos) / n,
        "update_tlvs_per_node_min": (sim.stats.update_tlvs - updates) / n,
        "reroute_hard_max_s": max(t for s, t in reroutes if not s),
        "reroute_silent_max_s": max(t for s, t in reroutes if s),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=200)
    args = parser.parse_args()
    print(f"handshake hybrid XXhfs+ML-KEM-768: {handshakes('XXhfs', 50):.2f} ms; X25519 XX alone: "
          f"{handshakes('XX', 50):.2f} ms (both sides, one process)")
    tmp = Path(tempfile.mkdtemp())
    from tests.conftest import free_port

    ports = [free_port() for _ in range(3)]
    nodes = [start_node(tmp, f"b{i}", [ports[i - 1]] if i else [], port=ports[i]) for i in range(3)]
    try:
        for node in nodes:
            wait_api(node)
        wait_routes(nodes[0], 2)
        tcp = max(plain_tcp_copy(MIB) for _ in range(args.runs))
        one = message_throughput(nodes[0], nodes[1], args.runs)
        two = message_throughput(nodes[0], nodes[2], args.runs)
        print(f"1 MiB messages via the API, best of {args.runs}: 1 hop {one:.1f} MB/s, 2 hops {two:.1f} MB/s; "
              f"plain TCP copy {tcp:.1f} MB/s; 1-hop ratio {one / tcp:.3f}")
    finally:
        for node in nodes:
            node.stop()
    sim = simulated(args.nodes)
    print(f"simulated {args.nodes} nodes: " + ", ".join(f"{k} {v:.3f}" for k, v in sim.items()))


if __name__ == "__main__":
    main()
