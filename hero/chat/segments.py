"""A chat history as append-only segments: a small open segment in the agent's head state, sealed segments apart.

New entries go to the open segment, kept in the head (`state["history"]`, written
every turn). Once the open segment's oldest entries fill a segment (a count or a
size bound) with a newer entry after them (`KEEP_OPEN`: a seal never holds an
entry no head has written yet), those oldest entries are sealed: written once, as their own immutable object
`agent/<id>/history/<n>`, and the head keeps only a small record of them (how
many, the last sealed seq, the hashes of the newest few, and each one's first seq:
one integer a segment of up to `SEGMENT_ENTRIES` entries, so a page from any
`before` goes straight to its segment). So a turn writes a bounded number of bytes
whatever the history's length, and reading the history reads segments one at a
time, newest first for pages, oldest first for an export.

Which entries are sealed depends only on the open segment's oldest entries (the
smallest prefix that reaches `SEGMENT_ENTRIES` or `SEGMENT_BYTES`), and a segment's
bytes only on its entries and the one before it: a seal written before a crash
that the head never recorded is written again with the same bytes, so it is
found equal and kept, never duplicated (`hero.runtime.activation` writes seals
put-if-absent). The head from before today's layout (a plain list of every
entry) is cut into the same segments on first activation (`migrate`).
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import blake3

from hero.chat.entry import HistoryEntry
from hero.errors import HeroError

log = logging.getLogger("hero.chat")

SLOT = "history"  # the state's key for the history's head
SEGMENT_ENTRIES = 1024  # a sealed segment holds at most this many entries …
SEGMENT_BYTES = 128 << 10  # … or the fewest whose JSON reaches this size
KEEP_OPEN = 1  # entries always left in the open segment after a seal (the newest, maybe not yet written)
WARM = 64  # newest entries an agent in memory keeps for its prompts, from the newest segment if the open is short
HEAD_HASHES = 4  # hashes of the newest sealed segments the head keeps (older ones are chained in the segments)

Load = Callable[[str], Awaitable[bytes]]  # reads a sealed object of the agent by name (raises HeroError)


def segment_name(n: int) -> str:
    return f"{SLOT}/{n}"


def new_head() -> dict[str, Any]:
    return {"open": [], "count": 0, "sealed_entries": 0, "last_seq": 0, "hashes": [], "firsts": []}


def is_head(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("open"), list) and isinstance(value.get("count"), int)


def _entry_bytes(item: dict[str, Any]) -> int:
    return len(json.dumps(item, separators=(",", ":")))


def sealable(open_entries: list[dict[str, Any]]) -> int:
    """How many of the oldest open entries to seal now (0: none): the smallest prefix that reaches the count
    or size bound, when `KEEP_OPEN` entries remain after it."""
    size = 0
    for count, item in enumerate(open_entries[: max(0, len(open_entries) - KEEP_OPEN)], 1):
        size += _entry_bytes(item)
        if count >= SEGMENT_ENTRIES or size >= SEGMENT_BYTES:
            return count
    return 0


def encode_segment(n: int, entries: list[dict[str, Any]], prev: str) -> bytes:
    body = {"n": n, "first": entries[0]["seq"], "last": entries[-1]["seq"], "prev": prev, "entries": entries}
    return json.dumps(body, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def seal(head: dict[str, Any], count: int) -> tuple[str, bytes]:
    """Move the `count` oldest open entries of `head` into the next sealed segment; its name and bytes.

    The caller writes the bytes (once) before the head that records them."""
    entries, head["open"] = head["open"][:count], head["open"][count:]
    n = head["count"] + 1
    hashes: list[str] = head["hashes"]
    data = encode_segment(n, entries, hashes[-1] if hashes else "")
    head.update(count=n, sealed_entries=head["sealed_entries"] + len(entries), last_seq=entries[-1]["seq"],
                hashes=[*hashes, digest(data)][-HEAD_HASHES:], firsts=[*head.get("firsts", []), entries[0]["seq"]])
    return segment_name(n), data


def migrate(entries: list[dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """A history in the single-object layout (every entry in the head) as a head and the segments to write first.

    Deterministic: run again on the same entries it gives the same bytes (a migration cut short is resumed)."""
    head = new_head()
    head["open"] = list(entries)
    seals = []
    while count := sealable(head["open"]):
        seals.append(seal(head, count))
    return head, seals


@dataclass(frozen=True)
class Segment:
    n: int
    first: int
    last: int
    prev: str
    entries: list[dict[str, Any]]


def decode_segment(n: int, data: bytes, expected: str | None) -> Segment:
    """Segment `n` from its stored bytes; ValueError if they are not it (or not what the head recorded)."""
    if expected is not None and digest(data) != expected:
        raise ValueError(f"segment {n} does not match the hash its head recorded")
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("n") != n or not isinstance(body.get("entries"), list):
        raise ValueError(f"object is not segment {n}")
    return Segment(n, int(body["first"]), int(body["last"]), str(body.get("prev", "")), body["entries"])


def gap_entry(first: int, last: int, n: int) -> HistoryEntry:
    """Stands for entries that cannot be read (a sealed segment lost beyond repair), so the reader knows."""
    span = f"{first}" if first == last else f"{first}–{last}"
    return HistoryEntry(first, "system", f"Messages {span} of this history could not be read (segment {n} is "
                        "damaged in storage); the rest is intact.", 0.0, "missing")


class Segments:
    """Reads one agent's sealed segments through `load`, one at a time: a fault costs that segment only."""

    def __init__(self, agent_id: str, head: dict[str, Any], load: Load) -> None:
        self.agent_id = agent_id
        self.count: int = head["count"]
        self.last_seq: int = head["last_seq"]
        hashes: list[str] = head["hashes"]
        self._known = {self.count - len(hashes) + 1 + i: h for i, h in enumerate(hashes)}
        # The first seq of segments `_first_n` … `count`: all of them, but for segments sealed before heads
        # recorded it (those are found by a search that reads segments).
        self._firsts: list[int] = list(head.get("firsts", []))[-self.count :] if self.count else []
        self._first_n = self.count - len(self._firsts) + 1
        self._load = load
        self._read: dict[int, Segment | None] = {}  # this reader's segments, so a page reads each once

    async def get(self, n: int) -> Segment | None:
        """Segment `n`, or None if it cannot be read (logged for the operator)."""
        if n in self._read:
            return self._read[n]
        segment: Segment | None
        try:
            segment = decode_segment(n, await self._load(segment_name(n)), self._known.get(n))
        except (HeroError, ValueError, KeyError, TypeError) as exc:
            reason = exc.message if isinstance(exc, HeroError) else str(exc)
            log.error("agent %s: history segment %d cannot be read: %s", self.agent_id[:12], n, reason)
            segment = None
        else:
            if segment.prev and segment.n > 1:
                self._known.setdefault(segment.n - 1, segment.prev)
        if len(self._read) >= 4:
            self._read.pop(next(iter(self._read)))
        self._read[n] = segment
        return segment

    def _first(self, n: int) -> int | None:
        return self._firsts[n - self._first_n] if self._first_n <= n <= self.count else None

    async def gap(self, n: int) -> HistoryEntry:
        """The entry standing for unreadable segment `n`: its range from the head, else from its neighbours."""
        first, after = self._first(n), self.last_seq + 1 if n == self.count else self._first(n + 1)
        if first is not None and after is not None:
            return gap_entry(first, max(first, after - 1), n)
        lower = await self.get(n - 1) if n > 1 else None
        upper = await self.get(n + 1) if n < self.count else None
        first = lower.last + 1 if lower is not None else (1 if n == 1 else 0)
        last = upper.first - 1 if upper is not None else (self.last_seq if n == self.count else 0)
        if not first:
            first = last or 1
        return gap_entry(first, max(first, last), n)

    async def entries(self, n: int) -> list[HistoryEntry]:
        """Segment `n`'s entries oldest first, or one gap entry if it cannot be read."""
        segment = await self.get(n)
        if segment is None:
            return [await self.gap(n)]
        return [HistoryEntry.from_json(item) for item in segment.entries]

    async def locate(self, seq: int) -> int:
        """The segment that holds `seq` (or the newest one before it), from the first seqs the head records:
        no segment read. Among segments sealed before heads recorded them: a guess from the count bound, then
        a binary search, each probe reading one segment."""
        if self._firsts and seq >= self._firsts[0]:
            return self._first_n + bisect.bisect_right(self._firsts, seq) - 1
        low, high = 1, self._first_n - 1
        if high < low:
            return 1
        probe = min(high, max(low, -(-seq // SEGMENT_ENTRIES)))
        while low < high:
            segment = await self.get(probe)
            if segment is None:  # unreadable: its neighbours say whether `seq` was in it
                lower = await self.get(probe - 1) if probe > 1 else None
                upper = await self.get(probe + 1) if probe < self.count else None
                if lower is not None and lower.last >= seq:
                    high = probe - 1
                elif upper is not None and upper.first <= seq:
                    low = probe + 1
                else:
                    return probe
            elif segment.first > seq:
                high = probe - 1
            elif segment.last < seq:
                low = probe + 1
            else:
                return probe
            probe = (low + high + 1) // 2
        return low

    async def newest_first(self, below: int | None = None) -> AsyncIterator[HistoryEntry]:
        """Sealed entries with seq below `below` (all if None), newest first, one segment in memory at a time."""
        start = self.count if below is None or below > self.last_seq else await self.locate(below - 1)
        for n in range(start, 0, -1):
            for entry in reversed(await self.entries(n)):
                if below is None or entry.seq < below:
                    yield entry

    async def oldest_first(self) -> AsyncIterator[HistoryEntry]:
        for n in range(1, self.count + 1):
            for entry in await self.entries(n):
                yield entry
