"""Notes: "remember that …" keeps a note, "/search words" finds notes by full-text search, ranked with BM25 in
DuckDB; "forget everything" clears them. The model sees some notes as facts: those sharing words with the message
it answers, then the latest, within a budget of about 300 tokens (a long note is clipped there, never dropped from
the notes), so no note can crowd the conversation out of the model's context.

The notes live in the skill's state (persisted with the agent); each search
builds a DuckDB index in memory, in a worker thread (a plain function), so it
never holds the node's event loop.
"""

from __future__ import annotations

import re
import time
from typing import Any

import duckdb

from hero.skills import SkillContext, command, on_message, prompt, tool

REMEMBER = re.compile(r"^\s*remember(?: that)?\s+(.+?)\s*$", re.IGNORECASE)
FORGET = re.compile(r"^\s*forget everything\s*$", re.IGNORECASE)
RECALL = re.compile(r"^\s*(?:what do you know about|recall|search (?:my )?notes for)\s+(.+?)\??\s*$", re.IGNORECASE)
MAX_NOTES = 2000
IN_PROMPT = 10  # notes the model sees as facts, at most
PROMPT_CHARS = 1200  # what the facts may take of the prompt: about 300 tokens
NOTE_CHARS = 400  # of one note, in the prompt
K1, B = 1.2, 0.75  # BM25

BM25 = f"""
WITH terms AS (
    SELECT id, regexp_replace(unnest(regexp_split_to_array(lower(text), '[^[:alnum:]]+')), 's$', '') AS term
    FROM notes
), t AS (SELECT id, term FROM terms WHERE term <> ''),
dl AS (SELECT id, count(*) AS len FROM t GROUP BY id),
stats AS (SELECT count(*) AS n, avg(len) AS avgdl FROM dl),
q AS (SELECT DISTINCT regexp_replace(unnest($words), 's$', '') AS term),
tf AS (SELECT t.id, t.term, count(*) AS f FROM t JOIN q ON t.term = q.term GROUP BY t.id, t.term),
df AS (SELECT term, count(*) AS n FROM tf GROUP BY term)
SELECT tf.id, sum(ln(1 + (stats.n - df.n + 0.5) / (df.n + 0.5))
                  * tf.f * ({K1} + 1) / (tf.f + {K1} * (1 - {B} + {B} * dl.len / stats.avgdl))) AS score
FROM tf JOIN df ON tf.term = df.term JOIN dl ON tf.id = dl.id, stats
GROUP BY tf.id ORDER BY score DESC, tf.id DESC LIMIT $limit
"""


def _notes(ctx: SkillContext) -> list[dict[str, Any]]:
    notes: list[dict[str, Any]] = ctx.state.setdefault("notes", [])
    return notes


def _add(ctx: SkillContext, text: str) -> dict[str, Any]:
    notes = _notes(ctx)
    note = {"id": (notes[-1]["id"] + 1) if notes else 1, "text": text, "ts": round(time.time(), 3)}
    notes.append(note)
    del notes[:-MAX_NOTES]
    return note


def words_of(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w]+", text.lower()) if w]


def full_text_search(notes: list[dict[str, Any]], query: str, limit: int) -> list[dict[str, Any]]:
    """The notes that match `query`'s words, best first (BM25 over lowercase words, plural s folded)."""
    words = words_of(query)
    if not words or not notes:
        return []
    with duckdb.connect(":memory:") as db:
        db.execute("CREATE TABLE notes (id INTEGER, text VARCHAR)")
        db.executemany("INSERT INTO notes VALUES (?, ?)", [(n["id"], n["text"]) for n in notes])
        ranked = db.execute(BM25, {"words": words, "limit": limit}).fetchall()
    by_id = {n["id"]: n for n in notes}
    return [by_id[row[0]] for row in ranked if row[0] in by_id]


@on_message
async def phrases(ctx: SkillContext, text: str) -> str | None:
    if FORGET.match(text):
        _notes(ctx).clear()
        return "Done: I have forgotten everything you asked me to remember."
    match = REMEMBER.match(text)
    if match is not None:
        _add(ctx, match[1])
        return f"I will remember that {match[1]}."
    return None


@on_message
def recall_phrase(ctx: SkillContext, text: str) -> str | None:
    match = RECALL.match(text)
    if match is None:
        return None
    found = full_text_search(_notes(ctx), match[1], 5)
    return _listing(found) if found else f"I have no notes about {match[1]}."


@command("note", usage="/note TEXT")
async def note_command(ctx: SkillContext, text: str) -> str:
    if not text:
        return "Usage: /note TEXT"
    note = _add(ctx, text)
    return f"Noted ({note['id']})."


@command("notes", usage="/notes [N]")
async def notes_command(ctx: SkillContext, text: str) -> str:
    count = int(text) if text.isdigit() else 10
    notes = _notes(ctx)[-count:]
    return _listing(notes) if notes else "No notes yet."


@command("search", usage="/search WORDS")
def search_command(ctx: SkillContext, text: str) -> str:
    found = full_text_search(_notes(ctx), text, 10)
    return _listing(found) if found else f"No notes match {text!r}."


@tool
async def remember(ctx: SkillContext, text: str) -> str:
    """Keep a note for later.

    Args:
        text: what to remember
    """
    note = _add(ctx, text)
    return f"Noted ({note['id']}): {text}"


@tool
def search(ctx: SkillContext, query: str, limit: int = 5) -> list[str]:
    """Find notes containing these words, best match first.

    Args:
        query: the words to look for
        limit: how many notes at most
    """
    return [n["text"] for n in full_text_search(_notes(ctx), query, max(1, min(limit, 50)))]


@tool
async def recall(ctx: SkillContext, count: int = 5) -> list[str]:
    """The latest notes, newest last.

    Args:
        count: how many
    """
    return [n["text"] for n in _notes(ctx)[-max(1, min(count, 50)):]]


@prompt
def facts(ctx: SkillContext, text: str) -> str | None:
    chosen = facts_for(_notes(ctx), text)
    return "Facts about the user: " + "; ".join(chosen) if chosen else None


def facts_for(notes: list[dict[str, Any]], text: str) -> list[str]:
    """The notes' texts for the prompt: those sharing the most words with `text` first, then the latest, each
    clipped to `NOTE_CHARS`, together within `PROMPT_CHARS`."""
    asked = {w for w in words_of(text) if len(w) > 2}
    scored = [(len(asked & set(words_of(n["text"]))), i) for i, n in enumerate(notes)] if asked else []
    relevant = [i for score, i in sorted(scored, reverse=True) if score > 0][:IN_PROMPT]
    taken = set(relevant)
    order = relevant + [i for i in range(len(notes) - 1, -1, -1) if i not in taken]
    out: list[str] = []
    left = PROMPT_CHARS
    for i in order[:IN_PROMPT]:
        note = _clip(notes[i]["text"], min(NOTE_CHARS, left))
        if len(note) < 20 and len(note) < len(notes[i]["text"]):
            break  # too little room left for this note to say anything
        out.append(note)
        left -= len(note) + 2
        if left <= 0:
            break
    return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _listing(notes: list[dict[str, Any]]) -> str:
    return "\n".join(f"{n['id']}. {n['text']}" for n in notes)
