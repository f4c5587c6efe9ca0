"""The chat app and the operator dashboard in a real headless Chromium against a real node.

Debian's /usr/bin/chromium (scripts/install-browser.sh installs it), driven by
Playwright for Python; one node and one browser for the whole module. Screenshots
of both pages at phone and desktop sizes go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from hero.identity import UserKey
from hero.runtime.events import ChatMessage
from hero.server import Parts
from hero.web.app import STATIC
from tests.conftest import ROOT, add_user, make_config, operator_token, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
MAX_TOKENS = 160


@dataclass
class Site:
    parts: Parts
    base: str
    operator: str
    users: dict[str, dict[str, str]]

    def url(self, path: str) -> str:
        return self.base + path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    config = make_config(tmp_path_factory.mktemp("browser"), max_tokens=MAX_TOKENS)
    async with serving(config) as parts:
        users = {name: add_user(config.data_dir, name) for name in ("alice", "bob", "carol")}
        yield Site(parts, f"http://127.0.0.1:{config.port}", operator_token(config.data_dir), users)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), "run scripts/install-browser.sh (Debian's chromium) before the browser tests"
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        await chromium.close()


@asynccontextmanager
async def page_at(
    browser: Browser, url: str, *, phone: bool = False, dark: bool = False, service_workers: str = "block"
) -> AsyncIterator[Page]:
    """A fresh profile (own storage) with one page; any uncaught script error fails the test."""
    context = await browser.new_context(
        viewport=PHONE if phone else DESKTOP,
        color_scheme="dark" if dark else "light",
        is_mobile=phone,
        has_touch=phone,
        service_workers=service_workers,
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], errors


def bubbles(page: Page, kind: str = "") -> Any:
    return page.locator(f"#log .msg{kind}")


async def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message to your agent")
    await box.fill(text)
    await box.press("Enter")


async def test_sign_in_link_history_and_streamed_reply(site: Site, browser: Browser):
    alice = site.users["alice"]
    async with page_at(browser, site.url(f"/?token={alice['token']}")) as page:
        await expect(page.locator("#chat-view")).to_be_visible()
        assert "token" not in page.url  # the sign-in link's token is stripped from the address bar
        assert await page.evaluate("localStorage.getItem('hero.token')") == alice["token"]
        await expect(page.locator("#who")).to_have_text("alice")
        await expect(page.locator("#live")).to_have_text("Live")
        assert await page.evaluate("document.activeElement.id") == "text"  # ready to type
        log = page.get_by_role("log", name="Conversation")
        assert await log.get_attribute("aria-live") == "polite"
        # record every length the reply's text goes through while it streams
        await page.evaluate(
            """() => { window.lengths = [];
                new MutationObserver(() => { const b = document.querySelector('.msg.streaming .body');
                    if (b) window.lengths.push(b.textContent.length); })
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }"""
        )
        await send(page, "Say hello to me")
        reply = bubbles(page, ".assistant").last
        await expect(reply).to_have_attribute("data-seq", "2", timeout=30_000)  # confirmed by the event stream
        await expect(page.get_by_role("button", name="Send")).to_be_visible()
        lengths = await page.evaluate("window.lengths")
        assert len(set(lengths)) >= 3, f"the reply did not stream token by token: {lengths}"
        text = (await reply.locator(".body").text_content()).strip()
        assert text
        await expect(bubbles(page)).to_have_count(2)  # the event stream confirmed, it did not duplicate
        assert await page.get_by_label("Message to your agent").input_value() == ""
    entries = await site.parts.chat.entries(alice["agent_id"])
    assert [e.role for e in entries] == ["user", "assistant"] and entries[1].content == text
    # opening the app again loads the history
    async with page_at(browser, site.url(f"/?token={alice['token']}"), phone=True) as page:
        await expect(bubbles(page)).to_have_count(2)
        await expect(bubbles(page, ".user").locator(".body")).to_have_text("Say hello to me")
        await expect(bubbles(page, ".assistant").locator(".body")).to_have_text(text)


async def test_a_reply_in_progress_can_be_stopped(site: Site, browser: Browser):
    bob = site.users["bob"]
    llm = site.parts.llm
    async with page_at(browser, site.url(f"/?token={bob['token']}")) as page:
        await expect(page.locator("#chat-view")).to_be_visible()
        before = llm.tokens_total
        await send(page, "Tell me a very long story about a dragon, a knight and a village.")
        reply = bubbles(page, ".assistant").last
        await expect(reply.locator(".body")).not_to_have_text("", timeout=30_000)  # the first tokens are here
        await page.get_by_role("button", name="Stop").click()
        await expect(reply).to_have_class(re.compile(r"\bstopped\b"))
        await expect(page.get_by_role("button", name="Send")).to_be_visible()
        await expect(reply).to_have_attribute("data-seq", "2", timeout=15_000)  # the partial reply was kept
    entries = await site.parts.chat.entries(bob["agent_id"])
    assert entries[-1].role == "assistant" and entries[-1].kind == "stopped"
    assert llm.tokens_total - before < MAX_TOKENS, "generation went on after Stop"
    # opened again, the history still shows the reply as stopped, to the eye and to a screen reader
    async with page_at(browser, site.url(f"/?token={bob['token']}")) as page:
        reply = bubbles(page, ".assistant").last
        await expect(reply).to_have_attribute("data-seq", "2")
        await expect(reply).to_have_class(re.compile(r"\bstopped\b"))
        await expect(reply.locator(".visually-hidden")).to_contain_text("stopped")


async def test_reminder_and_runtime_message_arrive_live_without_reload(site: Site, browser: Browser):
    carol = site.users["carol"]
    async with page_at(browser, site.url(f"/?token={carol['token']}"), phone=True) as page:
        await expect(page.locator("#live")).to_have_text("Live")
        await page.evaluate("window.notReloaded = true")
        await send(page, "remind me in 2 seconds to stretch")
        await expect(bubbles(page, ".assistant").first.locator(".body")).to_have_text(
            "OK, I will remind you to stretch in 2 seconds.", timeout=15_000
        )
        reminder = bubbles(page, ".reminder")
        await expect(reminder.locator(".body")).to_have_text("⏰ Reminder: stretch", timeout=15_000)
        # a message delivered through the runtime (another device, another agent) shows up too
        reply = await site.parts.node.deliver(carol["agent_id"], ChatMessage("remember that I water plants on Sunday"))
        await reply.text()
        await expect(bubbles(page).locator(".body").last).to_have_text("I will remember that I water plants on Sunday.")
        await expect(bubbles(page)).to_have_count(5)
        assert await page.evaluate("window.notReloaded") is True
        await save(page, "chat-phone-light")


NEWEST_GEOMETRY = """() => {
    const msgs = document.querySelectorAll('#log .msg');
    const last = msgs[msgs.length - 1].getBoundingClientRect();
    const log = document.getElementById('log').getBoundingClientRect();
    const composer = document.getElementById('composer').getBoundingClientRect();
    return {last_top: last.top, last_bottom: last.bottom, log_top: log.top, log_bottom: log.bottom,
            composer_top: composer.top};
}"""


async def assert_newest_in_view(page: Page, when: str) -> None:
    """The newest bubble's end is on screen: inside the log, above the composer."""
    await page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    g = await page.evaluate(NEWEST_GEOMETRY)
    assert g["log_top"] < g["last_bottom"] <= min(g["log_bottom"], g["composer_top"]) + 1, (when, g)


async def test_the_newest_message_stays_in_view_on_a_phone(site: Site, browser: Browser):
    """After load, reload, the keyboard opening, send, stop and a live reminder, the newest message is visible."""
    user = site.parts.users.add("erin", UserKey.generate().agent_id)
    token, _ = site.parts.users.issue(user)
    for i in range(14):  # a history longer than a phone screen
        await (await site.parts.node.deliver(user.agent_id, ChatMessage(f"remember that fact {i} is true"))).text()
    async with page_at(browser, site.url(f"/?token={token}"), phone=True) as page:
        await expect(bubbles(page)).to_have_count(28)
        await expect(page.locator("#footprint")).to_be_visible()  # the power bar comes after the history
        await assert_newest_in_view(page, "after load")
        await page.reload()
        await expect(bubbles(page)).to_have_count(28)
        await expect(page.locator("#footprint")).to_be_visible()
        await assert_newest_in_view(page, "after a reload")
        await save(page, "chat-phone-after-reload")
        await page.set_viewport_size({"width": PHONE["width"], "height": 500})  # the on-screen keyboard opens
        await page.get_by_label("Message to your agent").focus()
        await assert_newest_in_view(page, "with the keyboard open")
        await send(page, "remember that phones scroll")
        await expect(bubbles(page).last).to_have_attribute("data-seq", "30", timeout=15_000)
        await expect(bubbles(page).last.locator(".body")).to_have_text("I will remember that phones scroll.")
        await assert_newest_in_view(page, "after send")
        await send(page, "Tell me a very long story about a dragon, a knight and a village.")
        reply = bubbles(page, ".assistant").last
        await expect(reply.locator(".body")).not_to_have_text("", timeout=60_000)
        await page.get_by_role("button", name="Stop").click()
        await expect(reply).to_have_class(re.compile(r"\bstopped\b"))
        await expect(reply).to_have_attribute("data-seq", "32", timeout=15_000)
        await assert_newest_in_view(page, "after stop")
        await send(page, "remind me in 2 seconds to stand up")
        await expect(bubbles(page, ".reminder").locator(".body")).to_have_text("⏰ Reminder: stand up", timeout=15_000)
        await assert_newest_in_view(page, "after a live reminder")
        await save(page, "chat-phone-keyboard-open")


async def test_expired_session_asks_to_sign_in_again_and_keeps_the_message(site: Site, browser: Browser):
    users = site.parts.users
    user = users.by_agent(site.users["carol"]["agent_id"])
    short, _ = users.issue(user, ttl=3)
    fresh, _ = users.issue(user)
    async with page_at(browser, site.url(f"/?token={short}")) as page:
        await expect(page.locator("#chat-view")).to_be_visible()
        await page.get_by_label("Message to your agent").fill("remember that drafts survive sign-in")
        # the live stream ends when the token expires, and the app asks to sign in again
        await expect(page.get_by_role("heading", name="Sign in again")).to_be_visible(timeout=15_000)
        await expect(page.locator("#signin-kept")).to_contain_text("your unsent message is kept")
        await page.get_by_label("Token or sign-in link").fill(f"{site.base}/?token={fresh}")  # a pasted link works
        await page.get_by_role("button", name="Sign in", exact=True).click()
        box = page.get_by_label("Message to your agent")
        await expect(box).to_have_value("remember that drafts survive sign-in")
        await box.press("Enter")
        await expect(bubbles(page).locator(".body").last).to_have_text("I will remember that drafts survive sign-in.")
        await expect(box).to_have_value("")
    entries = await site.parts.chat.entries(user.agent_id)
    assert entries[-2].content == "remember that drafts survive sign-in"  # the kept draft reached the agent


async def test_sign_in_with_own_key_and_sign_out(site: Site, browser: Browser):
    key = UserKey.generate()
    site.parts.users.add("dave", key.agent_id)
    async with page_at(browser, site.url("/"), phone=True) as page:
        await expect(page.get_by_role("heading", name="Sign in to your agent")).to_be_visible()
        await page.get_by_role("tab", name="Secret key").click()
        await page.get_by_label("Your secret key").fill(UserKey.generate().secret_hex)  # a key the node does not know
        await page.get_by_role("button", name="Sign in with key").click()
        await expect(page.get_by_role("alert")).to_contain_text("not a user of this node")
        await page.get_by_label("Your secret key").fill(key.secret_hex)
        await page.get_by_role("button", name="Sign in with key").click()
        await expect(page.locator("#who")).to_have_text("dave")
        assert await page.get_by_label("Your secret key").input_value() == ""  # the key is not kept around
        token = await page.evaluate("localStorage.getItem('hero.token')")
        assert (await site.parts.users.authenticate(token)).sub == key.agent_id
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in to your agent")).to_be_visible()
        assert await page.evaluate("localStorage.getItem('hero.token')") is None
    async with httpx.AsyncClient(base_url=site.base) as http:
        r = await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401  # signing out revoked the token on the node


async def test_dashboard_live_power_top_consumers_and_history(site: Site, browser: Browser):
    alice = site.users["alice"]
    for user in site.users.values():  # every user's agent has done something the ledger can show
        await (await site.parts.node.deliver(user["agent_id"], ChatMessage("remember that I use the dashboard"))).text()
    async with page_at(browser, site.url(f"/dashboard?token={site.operator}"), dark=True) as page:
        assert "token" not in page.url
        await expect(page.locator("#power-card")).to_be_visible()
        watts = page.locator("#node-watts")
        await expect(watts).to_have_text(re.compile(r"^\d+(\.\d+)? W$"), timeout=10_000)
        await expect(page.locator("#source")).to_have_text("model")  # no RAPL in CI VMs; the badge says so
        await page.evaluate(
            """() => { window.powerUpdates = 0;
                new MutationObserver(() => window.powerUpdates++)
                .observe(document.querySelector('#top-table tbody'), {childList: true}); }"""
        )

        async def load() -> None:  # give the node something to meter while we watch
            async with httpx.AsyncClient(base_url=site.base, timeout=60) as http:
                await http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {alice['token']}"},
                    json={"messages": [{"role": "user", "content": "Describe the sea in detail."}]},
                )

        worker = asyncio.create_task(load())
        # the figures arrive live, 1 Hz (the watts may read the same on a machine other work keeps busy)
        await page.wait_for_function("() => window.powerUpdates >= 3", timeout=15_000)
        await worker
        await expect(page.locator("#live-chart path.line")).to_have_count(1)
        rows = page.locator("#top-table tbody tr")
        await expect(rows.first).to_be_visible()
        assert await rows.count() >= 3  # alice, bob, carol (and dave) have all talked
        agents = await page.evaluate(
            """() => [...document.querySelectorAll('#top-table tbody tr')].map(r => r.dataset.agent)"""
        )
        async with httpx.AsyncClient(base_url=site.base) as http:
            r = await http.get("/api/node/power", headers={"Authorization": f"Bearer {site.operator}"})
            report = r.json()
        by_watts = [a["agent_id"] for a in sorted(report["agents"], key=lambda a: a["watts"], reverse=True)]
        assert set(agents) == set(by_watts)
        shown = await page.evaluate(
            "() => [...document.querySelectorAll('#top-table tbody tr')].map(r => Number(r.dataset.watts))"
        )
        assert shown == sorted(shown, reverse=True)  # top consumers first
        # the header and the table are figures of one window, and they agree
        shown = await page.evaluate(
            """async () => {
                const { fmtWatts } = await import('/static/lib/api.js');
                const rows = [...document.querySelectorAll('#top-table tbody tr')];
                return { header: document.getElementById('headroom').textContent,
                         rows: fmtWatts(rows.reduce((sum, r) => sum + Number(r.dataset.watts), 0)) };
            }"""
        )
        assert f"agents {shown['rows']}" in shown["header"], shown
        assert re.search(r"mean of the last \d+ s", shown["header"]) and "this second" not in shown["header"]
        # agents go by their users' names (the id stays in the title)
        names = await page.locator("#top-table tbody tr .agent-name").all_text_contents()
        assert {"alice", "bob", "carol"} <= set(names), names
        await expect(rows.first.locator("td.joules")).to_have_text(re.compile(r"\d [mkM]?J$"))
        await expect(rows.first.locator("td.today")).to_have_text(re.compile(r"\d [µmk]?Wh$"))
        await expect(page.locator("#agents-active")).to_have_text(re.compile(r"^[1-9]\d*$"))
        await expect(page.locator("#llm-loaded")).to_have_text("loaded")
        # history from DuckDB: node watts and the top agents, for the hour and the day
        await expect(page.locator("#history-card")).to_be_visible()
        await expect(page.locator("#hist-node path.line, #hist-node circle").first).to_be_attached(timeout=20_000)
        await page.get_by_role("button", name="Last day").click()
        await expect(page.get_by_role("button", name="Last day")).to_have_attribute("aria-pressed", "true")
        await expect(page.locator("#hist-legend li").first).to_be_visible()
        # the agents' chart and its legend speak one unit: watts (the legend: each agent's mean over the window)
        legend = await page.locator("#hist-legend li").all_text_contents()
        assert all(re.search(r"\d [µm]?W$", item) for item in legend), legend
        assert {"alice", "bob", "carol"} & set(await page.locator("#hist-legend .agent-name").all_text_contents())
        axis = await page.locator("#hist-agents text.axis-label").all_text_contents()
        assert any(re.search(r" [µm]?W$", label) for label in axis), axis
        await expect(page.locator("#hist-agents-title")).to_contain_text("watts")
        await save(page, "dashboard-desktop-dark", full_page=True)


async def test_dashboard_storage_panel_shows_qss_health(site: Site, browser: Browser):
    """QSS is the node's store: the storage panel shows its 20 backends, repairs and the last scrub."""
    async with page_at(browser, site.url(f"/dashboard?token={site.operator}"), phone=True) as page:
        card = page.get_by_role("region", name=re.compile("^Storage"))
        await expect(card).to_be_visible()
        await expect(page.locator("#storage-health")).to_have_text("healthy")
        await expect(card.locator("dd").first).to_have_text("20 / 20")
        backends = page.locator("#storage-backends li")
        await expect(backends).to_have_count(20)
        await expect(backends.first).to_contain_text("up")
        await expect(page.locator("#net-card")).to_be_hidden()  # no overlay on this node: no panel
        status = await site.parts.store.status()
        assert await backends.count() == len(status["backends"]) == 20


async def test_dashboard_storage_card_fills_its_row(site: Site, browser: Browser):
    """With no overlay panel beside it, the storage card takes the whole row, and 20 backends stay compact."""
    async with page_at(browser, site.url(f"/dashboard?token={site.operator}")) as page:
        card = page.locator("#storage-card")
        await expect(page.locator("#storage-backends li")).to_have_count(20)
        await expect(page.locator("#top-card")).to_be_visible()
        box, full = await card.bounding_box(), await page.locator("#top-card").bounding_box()
        assert abs(box["width"] - full["width"]) <= 1, (box, full)
        assert box["height"] < 420, box  # not a 20-row table beside an empty half
        await card.scroll_into_view_if_needed()
        await save(page, "dashboard-storage-desktop")


async def test_dashboard_sign_out_revokes_the_operator_token(site: Site, browser: Browser):
    token = operator_token(site.parts.config.data_dir)  # not the shared one: this test revokes it
    async with page_at(browser, site.url(f"/dashboard?token={token}")) as page:
        await expect(page.locator("#dash")).to_be_visible()
        await page.locator("#signout").click()
        await expect(page.locator("#signin-view")).to_be_visible()
        await expect(page.locator("#signin-error")).to_contain_text("hero operator token")
        status = await page.evaluate(
            "async (t) => (await fetch('/api/node/status', {headers: {Authorization: 'Bearer ' + t}})).status", token
        )
    assert status == 401


async def test_a_user_token_gets_no_dashboard_data(site: Site, browser: Browser):
    alice = site.users["alice"]
    async with page_at(browser, site.url(f"/dashboard?token={alice['token']}")) as page:
        await expect(page.get_by_role("alert")).to_contain_text("not the operator token")
        await expect(page.locator("#dash")).to_be_hidden()
        statuses = await page.evaluate(
            """async (token) => {
                const out = {};
                for (const path of ['/api/node/status', '/api/node/status/stream', '/api/node/power',
                                    '/api/node/power/stream', '/api/node/power/chart?window=1h',
                                    '/api/node/power/history', '/api/node/agents', '/api/node/storage',
                                    '/metrics']) {
                    out[path] = (await fetch(path, {headers: {Authorization: 'Bearer ' + token}})).status;
                }
                return out;
            }""",
            alice["token"],
        )
    assert set(statuses.values()) == {403}, statuses


async def test_pwa_manifest_service_worker_and_offline_shell(site: Site, browser: Browser):
    async with httpx.AsyncClient(base_url=site.base) as http:
        r = await http.get("/manifest.webmanifest")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/manifest+json")
        manifest = r.json()
        assert manifest["start_url"] == "/" and manifest["scope"] == "/" and manifest["display"] == "standalone"
        assert manifest["name"] and manifest["short_name"] and manifest["theme_color"] and manifest["background_color"]
        sizes = {}
        for icon in manifest["icons"]:
            got = await http.get(icon["src"])
            assert got.status_code == 200, icon["src"]
            if icon["type"] == "image/png":
                assert got.content[:8] == b"\x89PNG\r\n\x1a\n"
                width, height = struct.unpack(">II", got.content[16:24])
                assert icon["sizes"] == f"{width}x{height}"
                sizes.setdefault(icon.get("purpose", "any"), set()).add(width)
        assert {192, 512} <= sizes["any"] and 512 in sizes["maskable"]  # what install prompts require
        sw = await http.get("/sw.js")
        assert sw.headers["content-type"].startswith("text/javascript")
        assert sw.headers["service-worker-allowed"] == "/" and "no-cache" in sw.headers["cache-control"]
    alice = site.users["alice"]
    async with page_at(browser, site.url(f"/?token={alice['token']}"), phone=True, service_workers="allow") as page:
        reg = await page.evaluate(
            "navigator.serviceWorker.ready.then(r => ({scope: r.scope, script: r.active.scriptURL}))"
        )
        assert reg == {"scope": site.url("/"), "script": site.url("/sw.js")}
        await page.reload()
        assert await page.evaluate("navigator.serviceWorker.controller !== null")
        cached = await page.evaluate(
            """async () => { const names = await caches.keys();
                const cache = await caches.open(names.find(n => n.startsWith('hero-shell-')));
                return (await cache.keys()).map(r => r.url); }"""
        )
        paths = {u.removeprefix(site.base) for u in cached}
        assert {"/", "/dashboard", "/static/chat.js", "/static/app.css", "/manifest.webmanifest"} <= paths
        modules = {f"/static/{p.relative_to(STATIC)}" for p in STATIC.rglob("*.js") if p.name != "sw.js"}
        assert modules <= paths, modules - paths  # every module the pages import works offline
        assert not any("token" in u for u in cached)  # sign-in links are never stored
        await page.context.set_offline(True)
        await page.reload()
        await expect(page).to_have_title("Hero — your agent")  # the shell comes from the cache
        await expect(page.locator("#banner")).to_contain_text("Cannot reach your node")
        await page.context.set_offline(False)
        await expect(page.locator("#chat-view")).to_be_visible(timeout=15_000)  # and it recovers by itself


async def test_pages_fit_phone_and_desktop_in_light_and_dark(site: Site, browser: Browser):
    alice = site.users["alice"]
    backgrounds = set()
    for name, url, phone, dark in (
        ("chat-desktop-dark", f"/?token={alice['token']}", False, True),
        ("chat-signin-phone-dark", "/", True, True),
        ("dashboard-phone-light", f"/dashboard?token={site.operator}", True, False),
        ("dashboard-desktop-light", f"/dashboard?token={site.operator}", False, False),
    ):
        async with page_at(browser, site.url(url), phone=phone, dark=dark) as page:
            ready = "#dash" if "dashboard" in name else ("#signin-view" if "signin" in name else "#chat-view")
            await expect(page.locator(ready)).to_be_visible()
            if "dashboard" in name:
                await expect(page.locator("#top-table tbody tr").first).to_be_visible(timeout=10_000)
                await expect(page.locator("#hist-node path, #hist-node circle").first).to_be_attached(timeout=20_000)
            elif "signin" not in name:
                await expect(page.locator("#live")).to_have_text("Live")
                await expect(bubbles(page).first).to_be_visible()
            overflow = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, f"{name}: the page scrolls sideways by {overflow}px"
            backgrounds.add((dark, await page.evaluate("getComputedStyle(document.body).backgroundColor")))
            await save(page, name, full_page="dashboard" in name)
    assert len({bg for dark, bg in backgrounds if dark} & {bg for dark, bg in backgrounds if not dark}) == 0


async def save(page: Page, name: str, *, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 5000

