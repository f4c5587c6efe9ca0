"""One unusable directory backend costs that backend only: `get`, `scrub`, writes and `hero up` go on with
the other 19, and status (CLI and `/api/node/storage`) says which backend is down and why."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import add_user, auth, hero_cli, make_config, operator_token, serving
from tests.store.helpers import AGENT, open_store


def _file_instead_of_dir(backend: Path) -> None:
    shutil.rmtree(backend)
    backend.write_text("x\n")


def _dangling_symlink(backend: Path) -> None:
    shutil.rmtree(backend)
    backend.symlink_to(backend.parent / "gone-disk")


def _packs_is_a_file(backend: Path) -> None:
    shutil.rmtree(backend / "packs")
    (backend / "packs").write_text("x\n")


def _meta_is_a_file(backend: Path) -> None:
    shutil.rmtree(backend / "meta")
    (backend / "meta").write_text("x\n")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "file": (_file_instead_of_dir, "backends/10 is a file, not a directory"),
    "dangling-symlink": (_dangling_symlink, "backends/10 is a symlink to a missing"),
    "packs-file": (_packs_is_a_file, "backends/10/packs is a file, not a directory"),
    "meta-file": (_meta_is_a_file, "backends/10/meta is a file, not a directory"),
}
STATE = b'{"messages": ["hello"]}' * 200
OTHER = os.urandom(300_000)


async def _stored(data: Path) -> None:
    store = await open_store(data, segment_size=64 << 10)
    try:
        await store.put(AGENT + "/state", STATE, epoch=1)
        await store.put("node/other", OTHER, epoch=1)
    finally:
        await store.aclose()


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
async def test_cli_get_scrub_and_status_go_on_without_the_broken_backend(tmp_path: Path, breakage: str):
    data = tmp_path / "data"
    await _stored(data)
    breaks, why = BREAKAGES[breakage]
    breaks(data / "backends" / "10")

    got = hero_cli("storage", "get", AGENT + "/state", "--data", str(data), check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout == STATE.decode()
    assert "Traceback" not in got.stderr

    scrub = hero_cli("storage", "scrub", "--data", str(data), "--json", check=False)
    assert scrub.returncode == 0, scrub.stderr
    report = json.loads(scrub.stdout)
    assert report["objects"] == 2 and report["unrecoverable"] == 0
    assert report["missing"] == report["repaired"] > 0  # its fragments were rebuilt on the other 19

    status = hero_cli("storage", "status", "--data", str(data), "--json", check=False)
    assert status.returncode == 0, status.stderr
    backends = {b["name"]: b for b in json.loads(status.stdout)["backends"]}
    assert backends["local-10"]["state"] == "down" and why in backends["local-10"]["error"]
    assert all(b["state"] == "up" for name, b in backends.items() if name != "local-10")
    if breakage == "file":
        text = hero_cli("storage", "status", "--data", str(data)).stdout
        assert "19/20 backends up" in text and why in text


async def test_reads_and_writes_go_on_with_19_and_the_backend_comes_back_when_fixed(tmp_path: Path):
    await _stored(tmp_path)
    backend = tmp_path / "backends" / "10"
    _file_instead_of_dir(backend)
    store = await open_store(tmp_path, segment_size=64 << 10)
    try:
        assert [b["name"] for b in (await store.status())["backends"] if b["state"] == "down"] == ["local-10"]
        assert await store.get(AGENT + "/state") == STATE
        assert await store.get("node/other") == OTHER
        report = await store.put_report(AGENT + "/state", b"next", epoch=1)
        assert report.fragments == 19 and "not a directory" in report.skipped["local-10"]
        assert await store.get(AGENT + "/state") == b"next"
        backend.unlink()  # the operator puts a disk back: an empty one
        assert await store.get(AGENT + "/state") == b"next"  # a read asks every backend: local-10 answers again
        again = await store.put_report(AGENT + "/state", b"after the fix", epoch=1)
        assert again.fragments == 20 and again.skipped == {}
        assert (await store.status())["up"] == 20
    finally:
        await store.aclose()


async def test_hero_up_starts_and_the_dashboard_api_shows_the_backend_down(tmp_path: Path):
    config = make_config(tmp_path)
    await _stored(config.data_dir)
    _dangling_symlink(config.data_dir / "backends" / "10")
    user = add_user(config.data_dir, "alice")
    async with serving(config):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=30) as client:
            storage = await client.get("/api/node/storage", headers=auth(operator_token(config.data_dir)))
            assert storage.status_code == 200
            body = storage.json()
            down = [b for b in body["backends"] if b["state"] != "up"]
            assert [b["name"] for b in down] == ["local-10"]
            assert "symlink to a missing" in down[0]["error"] and body["up"] == 19
            me = await client.get("/api/me", headers=auth(user["token"]))
            assert me.status_code == 200


def test_a_fragment_server_on_an_unusable_directory_is_one_line_and_exit_2(tmp_path: Path):
    where = tmp_path / "disk"
    where.write_text("a file, not a directory\n")
    result = hero_cli("storage", "serve", "--dir", str(where), "--port", "9", "--location", "x", "--trust", "ab" * 32,
                      check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("hero: ") and "is a file, not a directory" in result.stderr
