"""`GET /api/me/messages?q=WORDS&limit=N`: a search of the user's own history, newest first, that reads sealed
segments one at a time, newest first, and stops at the segment holding the last match it needs.

A real node on 127.0.0.1 over real QSS fragments on disk, with a few thousand entries in small sealed segments;
the segments read are counted at the store (as `tests.test_history_segments.Recording` does).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import httpx
import pytest

from hero.chat import segments
from hero.chat.agent import ChatAgent
from hero.chat.history import stored_head
from hero.runtime.events import ChatMessage, Event, Reply
from tests.conftest import add_user, auth, make_config, serving

SEGMENT_ENTRIES = 64  # small segments, so a few thousand entries make dozens of them
ALICE_ENTRIES = 3_000


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "SEGMENT_ENTRIES", SEGMENT_ENTRIES)


class Writer(ChatAgent):
    """`bulk WHO N` adds N entries in one turn, each naming its seq and one of 97 topics; no LLM."""

    async def handle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, ChatMessage) and event.text.startswith("bulk "):
            _, who, count = event.text.split()
            for _ in range(int(count)):
                seq = len(self.history) + 1
                self.history.add("user" if seq % 2 else "assistant", f"{who} line {seq} about Topic{seq % 97}")
            await self.ctx.persist()
        reply.accept()
        reply.write("kept")


async def bulk(http: httpx.AsyncClient, token: str, who: str, count: int) -> None:
    r = await http.post("/v1/chat/completions", headers=auth(token),
                        json={"messages": [{"role": "user", "content": f"bulk {who} {count}"}]})
    assert r.status_code == 200, r.text


async def search(http: httpx.AsyncClient, token: str, **params: Any) -> httpx.Response:
    return await http.get("/api/me/messages", headers=auth(token), params=params)


async def test_search_finds_the_newest_matches_reading_only_the_segments_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, agent="tests.test_history_search:Writer")
    async with serving(config) as parts:
        alice = add_user(config.data_dir, "alice")
        bob = add_user(config.data_dir, "bob")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await bulk(http, alice["token"], "alice", ALICE_ENTRIES)
            await bulk(http, bob["token"], "bob", 300)
            assert await parts.node.hibernate(alice["agent_id"])  # every segment read comes from the store
            head, _ = stored_head(await parts.node.read_state(alice["agent_id"]))
            count, firsts = head["count"], head["firsts"]
            assert count >= ALICE_ENTRIES // SEGMENT_ENTRIES - 1 and len(firsts) == count

            read: list[str] = []
            real_get = parts.store.get

            async def counting_get(key: str, version: int | None = None) -> bytes:
                if key.startswith(f"agent/{alice['agent_id']}/history/"):
                    read.append(key)
                return await real_get(key, version)

            monkeypatch.setattr(parts.store, "get", counting_get)

            def segment_of(seq: int) -> int:
                return bisect.bisect_right(firsts, seq)  # segments are numbered from 1

            # the newest three matches, newest first; a fourth is looked for, to say there are more
            r = await search(http, alice["token"], q="about TOPIC12", limit=3)
            assert r.status_code == 200, r.text
            found = r.json()
            assert [m["seq"] for m in found["messages"]] == [2922, 2825, 2728]
            assert [m["content"] for m in found["messages"]] == [f"alice line {s} about Topic12" for s in
                                                                (2922, 2825, 2728)]
            assert found["has_more"] is True and found["next_before"] is None
            needed = list(range(count, segment_of(2631) - 1, -1))  # newest first, down to the fourth match's
            assert read == [f"agent/{alice['agent_id']}/history/{n}" for n in needed], (read, count)
            assert len(read) <= 7 < count // 5

            # the same entry JSON as a page shows
            read.clear()
            page = (await http.get("/api/me/messages", headers=auth(alice["token"]),
                                   params={"before": 2923, "limit": 1})).json()
            assert page["messages"] == found["messages"][:1]

            # every match when fewer than `limit` exist: each segment read once, has_more false
            read.clear()
            everywhere = (await search(http, alice["token"], q="topic12", limit=100)).json()
            assert [m["seq"] for m in everywhere["messages"]] == list(range(2922, 0, -97))
            assert everywhere["has_more"] is False
            assert sorted(read) == sorted(set(read)) and len(read) == count

            # the matches (and the one beyond `limit`) all in the open segment: no sealed segment is read
            read.clear()
            newest = (await search(http, alice["token"], q="about", limit=2)).json()
            assert [m["seq"] for m in newest["messages"]] == [ALICE_ENTRIES, ALICE_ENTRIES - 1]
            assert newest["has_more"] is True and read == []

            # another user's token searches their own history, never alice's
            mine = (await search(http, bob["token"], q="topic12", limit=50)).json()
            assert [m["seq"] for m in mine["messages"]] == [206, 109, 12]
            assert all(m["content"].startswith("bob line") for m in mine["messages"])
            assert (await search(http, bob["token"], q="alice")).json() == {
                "messages": [], "has_more": False, "next_before": None}
            assert read == []  # bob's searches read none of alice's segments


async def test_bad_search_parameters_are_422_or_400_naming_the_field(tmp_path: Path) -> None:
    config = make_config(tmp_path, agent="tests.test_history_search:Writer")
    async with serving(config):
        alice = add_user(config.data_dir, "alice")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=60) as http:
            await bulk(http, alice["token"], "alice", 10)
            cases: list[tuple[dict[str, Any], int, str]] = [
                ({"q": ""}, 422, "q"),
                ({"q": "   "}, 422, "q"),
                ({"q": "?!"}, 422, "q"),
                ({"q": "a" * 201}, 422, "q"),
                ({"q": "line", "before": 5}, 422, "before"),
                ({"q": "line", "limit": 0}, 400, "limit"),
                ({"q": "line", "limit": 501}, 400, "limit"),
                ({"q": "line", "limit": "x"}, 400, "limit"),
            ]
            for params, status, field in cases:
                r = await search(http, alice["token"], **params)
                assert r.status_code == status and r.json()["error"]["param"] == field, (params, r.text)
            r = await search(http, alice["token"], q="a" * 195 + " line")  # 200 characters: accepted
            assert r.status_code == 200 and r.json()["messages"] == []
            r = await search(http, alice["token"], q="LINE 7")
            assert [m["seq"] for m in r.json()["messages"]] == [7]
            assert (await http.get("/api/me/messages", params={"q": "line"})).status_code == 401
