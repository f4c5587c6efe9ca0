"""Prompt reuse: what each KV sequence holds, and the saved states of conversations that lost their cells.

An agent's next turn starts with its previous prompt and reply, so while its
cells are still in a sequence only the new tokens are processed. When another
agent needs the cells, the conversation's state is saved
(`llama_state_seq_get_data`) into this store, most recently used kept within
a byte budget; when the agent returns it is restored if copying it back is
cheaper than recomputing it (`Rates`), else recomputed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SAVE_TOKENS = 32  # shorter prefixes are recomputed in about a decode step; not worth their bytes


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Saved:
    tokens: list[int]
    data: bytes


class PrefixStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._saved: OrderedDict[str, Saved] = OrderedDict()

    def __len__(self) -> int:
        return len(self._saved)

    def put(self, agent_id: str, tokens: list[int], data: bytes) -> None:
        self.drop(agent_id)
        if len(data) > self.max_bytes:
            return
        while self._saved and self.bytes + len(data) > self.max_bytes:
            _, old = self._saved.popitem(last=False)
            self.bytes -= len(old.data)
        self._saved[agent_id] = Saved(tokens, data)
        self.bytes += len(data)

    def take(self, agent_id: str) -> Saved | None:
        saved = self._saved.pop(agent_id, None)
        if saved is not None:
            self.bytes -= len(saved.data)
        return saved

    def drop(self, agent_id: str) -> None:
        self.take(agent_id)

    def clear(self) -> None:
        self._saved.clear()
        self.bytes = 0


class Rates:
    """Measured costs that decide restore vs recompute: prompt tokens per second and restored bytes per second."""

    def __init__(self, prompt_tps: float = 500.0, restore_bps: float = 1e9) -> None:
        self.prompt_tps = prompt_tps
        self.restore_bps = restore_bps

    def prompt(self, tokens: int, seconds: float) -> None:
        if tokens >= 8 and seconds > 0:
            self.prompt_tps += 0.2 * (tokens / seconds - self.prompt_tps)

    def restore(self, nbytes: int, seconds: float) -> None:
        if seconds > 0:
            self.restore_bps += 0.3 * (nbytes / seconds - self.restore_bps)

    def restore_pays(self, reused_tokens: int, nbytes: int) -> bool:
        return nbytes / self.restore_bps < reused_tokens / self.prompt_tps
