"""Five real overlay nodes (separate processes) in a ring on 127.0.0.1, spoken to through Mycelium's API."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.net.helpers import Proc, start_node, wait_api, wait_routes

N = 5


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    tmp: Path = tmp_path_factory.mktemp("ring")
    ports = [free_port() for _ in range(N)]
    nodes = [start_node(tmp, f"n{i}", [ports[(i + 1) % N]], port=ports[i]) for i in range(N)]
    try:
        for node in nodes:
            wait_api(node)
        for node in nodes:
            wait_routes(node, N - 1)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def send(src: Proc, dst: Proc, payload: bytes, topic: bytes = b"t") -> str:
    r = src.post("/api/v1/messages", json={"dst": {"pk": dst.public}, "topic": b64(topic), "payload": b64(payload)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_message_reaches_the_farthest_node(ring: list[Proc]) -> None:
    a, far = ring[0], ring[2]
    payload = bytes(range(256)) * 1000  # 256 kB: several frames, acked
    mid = send(a, far, payload)
    r = far.get("/api/v1/messages", params={"timeout": 10})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "srcIp", "srcPk", "dstIp", "dstPk", "topic", "payload"}
    assert body["id"] == mid and body["srcPk"] == a.public and body["srcIp"] == a.address
    assert body["dstIp"] == far.address and base64.b64decode(body["payload"]) == payload
    deadline = time.monotonic() + 5
    while a.get(f"/api/v1/messages/status/{mid}").json()["state"] not in ("received", "read"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = a.get(f"/api/v1/messages/status/{mid}").json()
    assert set(info) >= {"dst", "state", "created", "deadline", "msgLen"} and info["msgLen"] == len(payload)


def test_api_paths_fields_and_status_codes(ring: list[Proc]) -> None:
    a, b = ring[0], ring[1]
    admin = a.get("/api/v1/admin").json()
    assert set(admin) == {"nodeSubnet", "nodeIp", "nodePubkey", "nodeStartTime"}
    assert admin["nodeIp"] == a.address and admin["nodePubkey"] == a.public
    assert a.get(f"/api/v1/pubkey/{b.address}").json() == {"publicKey": b.public}
    assert a.get("/api/v1/pubkey/5ff::1").status_code == 404
    assert a.get("/api/v1/pubkey/not-an-ip").status_code == 400
    routes = a.get("/api/v1/admin/routes/selected").json()
    assert len(routes) == N - 1 and set(routes[0]) == {"subnet", "nextHop", "metric", "seqno"}
    assert isinstance(a.get("/api/v1/admin/routes/fallback").json(), list)
    assert a.get("/api/v1/admin/routes/queried").json() == []
    stats = a.get("/api/v1/admin/stats/packets").json()
    assert set(stats) == {"bySource", "byDestination"}
    peers = a.get("/api/v1/admin/peers").json()
    assert peers and peers[0]["endpoint"]["proto"] == "tcp" and "socket" in peers[0]["endpoint"]["addr"]
    # peers: 204 added, 409 duplicate, 400 malformed, 204 deleted, 404 unknown
    extra = f"tcp://127.0.0.1:{free_port()}"
    assert a.post("/api/v1/admin/peers", json={"endpoint": extra}).status_code == 204
    assert a.post("/api/v1/admin/peers", json={"endpoint": extra}).status_code == 409
    assert a.post("/api/v1/admin/peers", json={"endpoint": "udp://x"}).status_code == 400
    assert httpx.delete(a.api + "/api/v1/admin/peers/" + extra.replace("/", "%2F")).status_code == 204
    assert httpx.delete(a.api + "/api/v1/admin/peers/tcp%3A%2F%2F1.2.3.4%3A1").status_code == 404
    # messages: 204 on an empty long-poll, 400 with a message on bad input, 404 on unknown status
    assert a.get("/api/v1/messages", params={"timeout": 0}).status_code == 204
    for bad in ({"dst": {"pk": "zz"}, "payload": ""}, {"dst": {"ip": "1.2.3.4"}, "payload": ""},
                {"dst": {"pk": b.public}, "payload": "***"}, {"dst": {"pk": b.public}}, {"payload": ""}):
        r = a.post("/api/v1/messages", json=bad)
        assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.text)
    assert a.post("/api/v1/messages", content=b"{not json").status_code == 400
    assert a.get("/api/v1/messages", params={"timeout": "x"}).status_code == 400
    assert a.get("/api/v1/messages/status/0123456789abcdef").status_code == 404
    # by ip, with a topic filter and peek
    r = a.post("/api/v1/messages", json={"dst": {"ip": b.address}, "topic": b64(b"x"), "payload": b64(b"hi")})
    assert r.status_code == 201
    peeked = b.get("/api/v1/messages", params={"timeout": 5, "topic": b64(b"x"), "peek": "true"}).json()
    assert b.get("/api/v1/messages", params={"timeout": 1, "topic": b64(b"y")}).status_code == 204
    popped = b.get("/api/v1/messages", params={"timeout": 5, "topic": b64(b"x")}).json()
    assert peeked == popped and base64.b64decode(popped["payload"]) == b"hi"


def test_reply_timeout_and_long_poll_does_not_block(ring: list[Proc]) -> None:
    a, b = ring[0], ring[1]
    with httpx.Client(timeout=30) as client:
        started = time.monotonic()
        # a 3 s long-poll on b must not delay other calls on b
        import threading

        polled: list[int] = []
        t = threading.Thread(target=lambda: polled.append(
            client.get(b.api + "/api/v1/messages", params={"timeout": 3, "topic": b64(b"nothing")}).status_code))
        t.start()
        time.sleep(0.2)
        assert client.get(b.api + "/api/v1/admin").status_code == 200
        assert time.monotonic() - started < 1.5
        t.join()
        assert polled == [204]
    # reply_timeout: 408 with the id when nobody answers; 200 with the reply when b answers
    r = a.post("/api/v1/messages", params={"reply_timeout": 1},
               json={"dst": {"pk": b.public}, "topic": b64(b"q"), "payload": b64(b"ping")})
    assert r.status_code == 408 and len(r.json()["id"]) == 16
    b.get("/api/v1/messages", params={"timeout": 5, "topic": b64(b"q")})
    import threading

    answered: list[httpx.Response] = []
    t = threading.Thread(target=lambda: answered.append(a.post(
        "/api/v1/messages", params={"reply_timeout": 10},
        json={"dst": {"pk": b.public}, "topic": b64(b"q2"), "payload": b64(b"ping")})))
    t.start()
    question = b.get("/api/v1/messages", params={"timeout": 10, "topic": b64(b"q2")}).json()
    r = b.post(f"/api/v1/messages/reply/{question['id']}", json={"payload": b64(b"pong")})
    assert r.status_code == 204
    t.join()
    assert answered[0].status_code == 200 and base64.b64decode(answered[0].json()["payload"]) == b"pong"


def test_kill_a_middle_node_and_delivery_resumes_within_2s(ring: list[Proc]) -> None:
    a, far = ring[0], ring[2]
    route = next(r for r in a.get("/api/v1/admin/routes/selected").json()
                 if r["subnet"].startswith(far.address.rsplit(":", 4)[0]))
    middle = ring[1] if route["nextHop"].endswith(f":{ring[1].port}") else ring[4]
    if middle is ring[4]:
        far = ring[3]  # a's route to ring[3] runs through ring[4]
    killed = time.monotonic()
    middle.kill()
    send(a, far, b"after the cut", topic=b"cut")
    r = far.get("/api/v1/messages", params={"timeout": 10, "topic": b64(b"cut")})
    elapsed = time.monotonic() - killed
    assert r.status_code == 200 and base64.b64decode(r.json()["payload"]) == b"after the cut"
    assert elapsed <= 2.0, f"delivery resumed after {elapsed:.2f}s"
