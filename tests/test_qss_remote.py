"""QSS over real fragment servers on 127.0.0.1: signed requests, placement by location, recovery, outages."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import blake3
import pytest

from hero.identity import NodeKeys
from hero.store import reqsign
from hero.store.backends.wire import encode_fragments
from tests.store.helpers import AGENT, agent_key, all_files, fragment_server, open_store, stored_fragment


def remote_config(urls: list[str], *, local: int = 0) -> str:
    lines = [f"local_backends = {local}"]
    for i, url in enumerate(urls):
        lines += ["[[backend]]", f'url = "{url}"', f'location = "site{i}"', f'name = "remote-{i}"']
    return "\n".join(lines) + "\n"


def request(url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def test_store_on_remote_fragment_servers_survives_losing_a_site_and_a_wipe(tmp_path: Path):
    data = tmp_path / "data"
    keys = NodeKeys.load_or_create(data)
    marker = b"REMOTE-PLAINTEXT-MARKER"
    states = {agent_key(i): marker + f" agent {i} ".encode() * (50 * i + 1) for i in range(6)}
    big = random.randbytes(3 << 20)
    with ExitStack() as stack:
        urls = [stack.enter_context(fragment_server(tmp_path / f"server{i}", [keys.node_id], location=f"site{i}"))
                for i in range(5)]
        config = remote_config(urls)
        (data / "storage.toml").write_text(config)
        store = await open_store(data)
        try:
            for key, value in states.items():
                await store.put(key, value, epoch=1)
            report = await store.put_report("node/big", big, epoch=1)
            assert report.fragments == 20 * 1 and report.skipped == {}
            status = await store.status()
            assert [b["kind"] for b in status["backends"]] == ["remote"] * 5
            assert all(b["fragments"] > 0 for b in status["backends"])
        finally:
            await store.aclose()
        for i in range(5):
            for path in all_files(tmp_path / f"server{i}"):
                assert marker not in path.read_bytes()

        for path in data.iterdir():
            if path.name != "keys":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        (data / "storage.toml").write_text(config)
        shutil.rmtree(tmp_path / "server3")  # a whole site loses its disk: 4 fragments of every segment
        store = await open_store(data)
        try:
            assert await store.keys() == sorted([*states, "node/big"])
            for key, value in states.items():
                assert await store.get(key) == value
            assert await store.get("node/big") == big
            status = await store.status()
            assert next(b for b in status["backends"] if b["name"] == "remote-3")["state"] == "down"
        finally:
            await store.aclose()


async def test_a_fragment_server_that_stops_is_skipped_and_reported(tmp_path: Path):
    data = tmp_path / "data"
    keys = NodeKeys.load_or_create(data)
    with ExitStack() as stack:
        urls = [stack.enter_context(fragment_server(tmp_path / f"s{i}", [keys.node_id])) for i in range(2)]
        (data / "storage.toml").write_text(remote_config(urls, local=18))
        store = await open_store(data)
        try:
            await store.put(AGENT + "/state", b"before the outage" * 100, epoch=1)
            stack.close()  # both servers stop
            assert await store.get(AGENT + "/state") == b"before the outage" * 100
            report = await store.put_report(AGENT + "/state", b"during the outage", epoch=1)
            assert report.fragments == 18
            assert set(report.skipped) == {"remote-0", "remote-1"}
            assert "unreachable" in report.skipped["remote-0"]
            status = await store.status()
            down = {b["name"]: b for b in status["backends"] if b["state"] == "down"}
            assert set(down) == {"remote-0", "remote-1"} and down["remote-0"]["error"]
        finally:
            await store.aclose()


async def test_an_idle_connection_the_server_closed_is_not_an_outage(tmp_path: Path):
    """A fragment server closes keep-alive connections idle past its timeout; the node's next call must not take
    that for an outage (the backend stays up, the put lands on every server, the get answers)."""
    data = tmp_path / "data"
    keys = NodeKeys.load_or_create(data)
    with ExitStack() as stack:
        urls = [stack.enter_context(fragment_server(tmp_path / f"s{i}", [keys.node_id], keep_alive_s=1))
                for i in range(3)]
        (data / "storage.toml").write_text("k = 2\nm = 1\n" + remote_config(urls))
        store = await open_store(data)
        try:
            for round in range(2):
                await store.put(AGENT + "/state", b"kept warm %d" % round * 100, epoch=1)
                await asyncio.sleep(1.6)  # every pooled connection is now closed by its server
                assert await store.get(AGENT + "/state") == b"kept warm %d" % round * 100
                await asyncio.sleep(1.6)
                report = await store.put_report(AGENT + "/state", b"after idle %d" % round, epoch=1)
                assert report.skipped == {}
                status = await store.status()
                assert {b["name"]: (b["state"], b["errors_total"]) for b in status["backends"]} == {
                    f"remote-{i}": ("up", 0) for i in range(3)}
                await asyncio.sleep(1.6)
        finally:
            await store.aclose()


def test_fragment_server_accepts_only_signed_fresh_requests_from_trusted_nodes(tmp_path: Path):
    trusted = NodeKeys.load_or_create(tmp_path / "trusted")
    stranger = NodeKeys.load_or_create(tmp_path / "stranger")
    fragment = b"ciphertext fragment bytes"
    digest = blake3.blake3(fragment).hexdigest()
    body = encode_fragments([(digest, fragment)])
    path = "/v1/fragments/put?replace=0"
    with fragment_server(tmp_path / "srv", [trusted.node_id]) as url:
        status, reply = request(url, "POST", path, body)
        assert status == 401 and b"not signed" in reply
        status, reply = request(url, "POST", path, body, reqsign.sign_headers(stranger, "POST", path, body))
        assert status == 403 and b"not trusted" in reply
        signed = reqsign.sign_headers(trusted, "POST", path, body)
        assert request(url, "POST", path, body, signed)[0] == 204
        status, reply = request(url, "POST", path, body, signed)
        assert status == 401 and b"replayed" in reply
        tampered = encode_fragments([(digest, b"something else entirely")])
        status, reply = request(url, "POST", path, tampered, reqsign.sign_headers(trusted, "POST", path, body))
        assert status == 401 and b"bad request signature" in reply
        status, reply = request(url, "POST", path, tampered, reqsign.sign_headers(trusted, "POST", path, tampered))
        assert status == 400 and json.loads(reply)["error"]["type"] == "integrity_error"
        old = reqsign.sign_headers(trusted, "POST", path, body)
        old[reqsign.TIME] = f"{time.time() - 3600:.6f}"
        assert request(url, "POST", path, body, old)[0] == 401
        listing = "/v1/fragments"
        status, reply = request(url, "GET", listing, b"", reqsign.sign_headers(trusted, "GET", listing, b""))
        assert status == 200 and [f[0] for f in json.loads(reply)["fragments"]] == [digest]
        for bad in ("/v1/meta/obj/../../../etc/passwd", "/v1/meta/obj/..%2F..%2Fetc"):
            status, reply = request(url, "GET", bad, b"", reqsign.sign_headers(trusted, "GET", bad, b""))
            assert status in (400, 404) and b"root:" not in reply
    assert stored_fragment(tmp_path / "srv", digest).read_bytes() == fragment


@pytest.mark.parametrize("size", [0, 1, 70_000])
async def test_remote_round_trip_sizes(tmp_path: Path, size: int):
    data = tmp_path / "data"
    keys = NodeKeys.load_or_create(data)
    payload = random.randbytes(size)
    with fragment_server(tmp_path / "srv", [keys.node_id]) as url:
        (data / "storage.toml").write_text("k = 2\nm = 2\n" + remote_config([url], local=3))
        store = await open_store(data)
        try:
            await store.put("node/x", payload, epoch=1)
            assert await store.get("node/x") == payload
            scrub = await store.scrub()
            assert (scrub["checked"], scrub["corrupt"], scrub["missing"]) == (4, 0, 0)
        finally:
            await store.aclose()


def test_an_idle_connection_with_a_high_descriptor_is_kept_until_its_peer_closes() -> None:
    """A node with many files open (pack files, raised limit) gets sockets numbered over 1024: select() cannot
    watch those, and every pooled connection was taken for closed, so keep-alive never worked there."""
    import os
    import resource
    import socket

    from hero.store.backends.remote import _closed_by_peer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    ours, theirs = socket.socketpair()
    high = os.dup2(ours.fileno(), 1500)
    ours.close()
    conn = http.client.HTTPConnection("127.0.0.1")
    conn.sock = socket.socket(fileno=high)
    try:
        assert not _closed_by_peer(conn)  # idle, open: kept for the next call
        theirs.close()
        assert _closed_by_peer(conn)  # the peer's FIN: not reused
    finally:
        conn.sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
