"""The operator dashboard's storage card, in a real headless Chromium against a real node: a backend that is down
says why, and objects the last scrub found damaged are listed by name."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from playwright.async_api import expect

from tests.browserkit import browser_page
from tests.conftest import make_config, operator_token, serving
from tests.store.helpers import AGENT, open_store

KEY = AGENT + "/timers"


async def test_storage_card_shows_a_down_backend_and_a_damaged_object(tmp_path: Path):
    config = make_config(tmp_path)
    data = config.data_dir
    store = await open_store(data)
    try:
        await store.put(KEY, b"[]", epoch=1)
        await store.put("node/fine", b"fine", epoch=1)
        oid = store.ring.object_id(KEY)
    finally:
        await store.aclose()
    for replica in (data / "backends").glob(f"*/meta/obj/{oid}/*.m"):
        replica.write_bytes(replica.read_bytes()[:-3])  # every replica of its manifest truncated
    store = await open_store(data)
    try:
        assert (await store.scrub())["damaged_objects"] == 1
    finally:
        await store.aclose()
    shutil.rmtree(data / "backends" / "07")
    (data / "backends" / "07").write_text("not a disk\n")

    async with serving(config):
        token = operator_token(data)
        async with browser_page(f"http://127.0.0.1:{config.port}/dashboard?token={token}") as page:
            card = page.get_by_role("region", name=re.compile("^Storage"))
            await expect(card).to_be_visible()
            await expect(page.locator("#storage-health")).to_have_text("1 down · 1 damaged")
            down = page.locator('#storage-backends li[data-state="down"]')
            await expect(down).to_have_count(1)
            await expect(down).to_contain_text("local-07")
            await expect(down).to_contain_text("is a file, not a directory")
            damaged = page.get_by_role("list", name="Damaged objects (last scrub)").locator("li")
            await expect(damaged).to_have_count(1)
            await expect(damaged).to_contain_text(KEY)
            await expect(damaged).to_contain_text("no valid replica")
