"""Damaged agents on the operator's screens (issue 9, item 6 follow-up): the status API lists each damaged agent
with its user and the store's reason, and the dashboard, in a real headless Chromium against a real node, shows
how many there are and why."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.async_api import expect

from hero.identity import NodeKeys
from hero.runtime.keys import timers_key
from hero.server import open_store
from tests.browserkit import browser_page
from tests.conftest import add_user, auth, make_config, operator_token, serving
from tests.test_runtime_faults import rot


async def test_status_and_dashboard_show_each_damaged_agent_and_why(tmp_path: Path):
    config = make_config(tmp_path)
    carol = add_user(config.data_dir, "carol")
    store = await open_store(config, NodeKeys.load_or_create(config.data_dir))
    try:
        await store.put(timers_key(carol["agent_id"]), b"[]", epoch=1)
        await rot(store, timers_key(carol["agent_id"]), 5)  # 5 of 20 fragments: one more than can be lost
    finally:
        await store.aclose()

    async with serving(config):
        token = operator_token(config.data_dir)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=30) as http:
            status = (await http.get("/api/node/status", headers=auth(token))).json()
        assert status["agents"]["damaged"] == 1
        [damaged] = status["damaged_agents"]
        assert damaged["agent_id"] == carol["agent_id"] and damaged["user"] == "carol"
        assert "timers unreadable" in damaged["reason"] and "only 15 of the 16" in damaged["reason"]
        assert damaged["since"] > 0

        async with browser_page(f"http://127.0.0.1:{config.port}/dashboard?token={token}") as page:
            await expect(page.locator("#agents-damaged")).to_have_text("1")
            listed = page.get_by_role("list", name="Damaged agents (not run until their storage reads again)")
            await expect(listed.locator("li")).to_have_count(1)
            await expect(listed).to_contain_text("carol")
            await expect(listed).to_contain_text("timers unreadable")
            await expect(listed).to_contain_text("only 15 of the 16")
