"""Fitting a conversation into the context window, in time linear in its length.

Each message is counted once. The counter given by the service counts a long
message only by its tail (no token covers more than the vocabulary's longest
piece, so a tail of `budget × longest` characters is already over budget),
and the newest message, when alone too long, is tokenized once and keeps its
last tokens (the end of a message is what asks). So a 1 MiB message costs
one tokenization of a bounded tail, never one per trimming step.

Prompt reuse wants the start of the kept history to stay put across an
agent's turns: a history cut anew every turn shares nothing with the previous
prompt after the system message. So once history must be cut, it is cut with
slack (to `slack` of the budget and of the messages), and later turns keep the
same first message (`start`) for as long as the rest still fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hero.errors import BadRequest

Messages = list[dict[str, str]]
MIN_NEWEST_TOKENS = 8  # a newest message cut shorter than this leaves nothing to answer


@dataclass(frozen=True)
class Trimmed:
    messages: Messages
    start: int | None  # fingerprint of the first kept non-system history message, for the next turn
    dropped: int  # history messages left out
    cut: bool  # the newest message lost its beginning


def fingerprint(message: dict[str, str]) -> int:
    return hash((message["role"], message["content"]))


def trim_messages(
    messages: Messages,
    count: Callable[[str], int],
    budget: int,
    *,
    per_message: int,
    cut_newest: Callable[[str, int], str],
    start: int | None = None,
    slack: float = 0.75,
) -> Trimmed:
    """Keep system messages and the newest one, then as much recent history as fits `budget` tokens.

    `count(text)` counts a message's tokens; `cut_newest(text, n)` keeps the
    last `n` tokens of a text. `start` is the fingerprint returned for this
    agent's previous turn.
    """
    if not messages:
        raise BadRequest("messages is empty", field="messages")
    newest = len(messages) - 1
    costs = [count(m["content"]) + per_message for m in messages]
    system = [i for i in range(newest) if messages[i]["role"] == "system"]
    history = [i for i in range(newest) if messages[i]["role"] != "system"]
    fixed = sum(costs[i] for i in system)
    room = budget - fixed - costs[newest]
    if room < 0:
        allowed = budget - fixed - per_message
        if allowed < MIN_NEWEST_TOKENS:
            raise BadRequest(
                f"the system messages alone take {fixed} of the {budget} prompt tokens this model allows",
                field="messages",
            )
        last = dict(messages[newest], content=cut_newest(messages[newest]["content"], allowed))
        return Trimmed([*(dict(messages[i]) for i in system), last], None, len(history), True)

    total_history = sum(costs[i] for i in history)
    first = _stable_start(messages, history, costs, room, start)
    if first is None and start is None and total_history <= room:
        first = 0  # nothing to cut: the whole conversation
    if first is None:  # cut anew, with slack for the turns to come
        if total_history <= room:  # it fits, but the caller's own window moved past our start
            limit_tokens, limit_messages = room, len(history) - int((1.0 - slack) * len(history))
        else:
            limit_tokens, limit_messages = int(room - (1.0 - slack) * budget), len(history)
        used = 0
        first = len(history)
        while first > 0 and len(history) - first < limit_messages and used + costs[history[first - 1]] <= limit_tokens:
            first -= 1
            used += costs[history[first]]
    kept_history = set(history[first:])
    kept = [dict(m) for i, m in enumerate(messages) if i in kept_history or i == newest or i in system]
    mark = fingerprint(messages[history[first]]) if first < len(history) else None
    return Trimmed(kept, mark, first, False)


def _stable_start(
    messages: Messages, history: list[int], costs: list[int], room: int, start: int | None
) -> int | None:
    """Where the previous turn's history began, if that message is still here and the rest still fits."""
    if start is None:
        return None
    for k, i in enumerate(history):
        if fingerprint(messages[i]) == start:
            return k if sum(costs[j] for j in history[k:]) <= room else None
    return None
