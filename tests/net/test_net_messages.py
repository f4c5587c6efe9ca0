"""The message protocol between two MessageServices on an in-memory wire that can lose frames."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from hero.net import inbox, messages
from hero.net.inbox import InboundMessage, Inbox
from hero.net.messages import ACK, CHUNK, DONE, INIT, MessageService
from hero.nursery import Nursery

A, B = b"a" * 32, b"b" * 32
Drop = Callable[[bytes, int, bytes], bool]  # (sender, flags, frame) -> lose it?


@asynccontextmanager
async def pair(drop: Drop = lambda *_: False) -> AsyncIterator[tuple[MessageService, MessageService, list[int]]]:
    """Services for keys A and B; every frame crosses one loop iteration later unless `drop` loses it."""
    loop = asyncio.get_running_loop()
    nursery = Nursery("test")
    services: dict[bytes, MessageService] = {}
    flags_seen: list[int] = []

    def wire(src: bytes) -> Callable[..., None]:
        def send(dst: bytes, *parts: bytes | memoryview) -> None:
            frame = b"".join(parts)
            flags = struct.unpack_from(">8sHH", frame)[1]
            flags_seen.append(flags)
            if not drop(src, flags, frame):
                loop.call_soon(services[dst].on_frame, src, frame)

        return send

    for key in (A, B):
        services[key] = MessageService(wire(key), nursery, local_pk=key, local_ip=f"400::{key[0]:x}",
                                       ip_of=lambda pk: f"400::{pk[0]:x}")
    try:
        yield services[A], services[B], flags_seen
    finally:
        await nursery.aclose()


def chunk_index(frame: bytes) -> int:
    return struct.unpack_from(">Q", frame, 12)[0]


async def test_a_message_larger_than_the_window_arrives_through_lost_chunks_and_a_lost_done() -> None:
    lost: set[tuple[str, int]] = set()

    def drop(src: bytes, flags: int, frame: bytes) -> bool:
        if src != A or flags & ACK:
            return False
        what = ("chunk", chunk_index(frame)) if flags & CHUNK else ("done", 0) if flags & DONE else ("init", 0)
        if what in {("chunk", 3), ("chunk", 65), ("done", 0), ("init", 0)} and what not in lost:
            lost.add(what)  # each is lost once: its first copy
            return True
        return False

    payload = os.urandom(messages.WINDOW * messages.CHUNK_BYTES + 123_457)  # more chunks than the window
    async with pair(drop) as (a, b, _):
        out = a.push(B, b"big", payload)
        assert await asyncio.wait_for(out.wait(), 10) == "received"
        got = await b.inbox.pop(topic=b"big", timeout_s=1, peek=False)
        assert got is not None and bytes(got.payload) == payload and got.src_pk == A.hex()
        assert len(lost) == 4 and a.stats.resent_chunks >= 2


async def test_a_message_that_fits_the_window_costs_one_round_trip_and_few_acks() -> None:
    async with pair() as (a, b, flags):
        out = a.push(B, b"", os.urandom(1 << 20))
        assert await asyncio.wait_for(out.wait(), 10) == "received"
        acks = [f for f in flags if f & ACK]
        assert acks.count(ACK | INIT) == 1 and acks.count(ACK | DONE) == 1
        assert len(acks) <= 2 + (1 << 20) // messages.CHUNK_BYTES // messages.ACK_EVERY
        assert b.stats.received == 1 and a.stats.resent_chunks == 0


async def test_messages_being_received_hold_a_bounded_number_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "MAX_PARTIAL_BYTES", 3 << 20)
    released = asyncio.Event()

    def hold_first(src: bytes, flags: int, frame: bytes) -> bool:
        # the first message's DONE waits until the second has been refused room once
        return src == A and bool(flags & DONE) and frame[:8] == first_id[0] and not released.is_set()

    first_id: list[bytes] = []
    async with pair(hold_first) as (a, b, _):
        first = a.push(B, b"1", os.urandom(2 << 20))
        first_id.append(first.id)
        second = a.push(B, b"2", os.urandom(2 << 20))
        for _ in range(200):
            if b.stats.busy:
                break
            await asyncio.sleep(0.01)
        assert b.stats.busy >= 1 and b._partial_bytes <= 3 << 20
        released.set()
        assert await asyncio.wait_for(first.wait(), 10) == "received"
        assert await asyncio.wait_for(second.wait(), 10) == "received"
        topics = {m.topic for m in [await b.inbox.pop(topic=None, timeout_s=1, peek=False) for _ in range(2)] if m}
        assert topics == {b"1", b"2"}


async def test_unread_messages_hold_a_bounded_number_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox, "MAX_INBOX_BYTES", 5 << 20)
    box = Inbox(lambda message: None)
    for i in range(8):
        box.arrived(InboundMessage(f"{i:016x}", "400::1", "aa" * 32, "400::2", "bb" * 32, b"", bytes(1 << 20)))
    assert len(box) == 5 and box.dropped == 3  # the oldest went first
    first = await box.pop(topic=None, timeout_s=0, peek=False)
    assert first is not None and first.id == f"{3:016x}"
