"""From sampled tokens to the text a person reads, as it streams.

Token pieces are bytes: a character may span two tokens, so bytes go through
an incremental UTF-8 decoder. Text that may be the start of a stop string
(the template's end marker written out) is held back until it is known not
to be one. Near the end of the token budget the unfinished word is held too,
so a reply cut by `max_tokens` ends at a word boundary, marked with "…".
"""

from __future__ import annotations

import codecs

CUT_MARK = "…"


class ReplyText:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self.text = ""  # everything emitted so far

    def add(self, piece: bytes, *, near_end: bool) -> tuple[str, bool]:
        """Take one token's bytes; return (text that may be shown now, whether a stop string ended the reply)."""
        pending = self._pending + self._decoder.decode(piece)
        if not self._started:
            pending = pending.lstrip()
        for stop in self.stops:
            at = pending.find(stop)
            if at >= 0:
                self._pending = ""
                return self._emit(pending[:at].rstrip()), True
        ready = len(pending) - self._stop_prefix(pending)
        if near_end:
            ready = _word_start(pending, ready)
        self._pending = pending[ready:]
        return self._emit(pending[:ready]), False

    def finish(self, *, cut: bool) -> str:
        """The rest of the text once the reply has ended; `cut` when the token budget ended it."""
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        if not cut:
            return self._emit(rest.rstrip() if not self.text else rest)
        kept = rest[: _word_start(rest, len(rest))].rstrip()
        if not self.text and not kept:  # the whole reply is one unfinished word: better than nothing
            kept = rest.rstrip()
        if not (self.text + kept).strip():
            return ""
        return self._emit(kept) + self._emit(CUT_MARK)

    def _emit(self, text: str) -> str:
        if text:
            self._started = True
            self.text += text
        return text

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-n:]):
                    longest = n
                    break
        return longest


def _word_start(text: str, end: int) -> int:
    """Where the last word of `text[:end]` starts, with the whitespace before it (0 if it is all one word)."""
    i = end
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i
