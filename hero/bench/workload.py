"""The simulated users' behaviour: seeded, reproducible, and written down here so a reader can judge it.

An assumption, not a survey. In their busiest hour an active user opens a chat session about
every 17 minutes (Poisson arrivals) and sends 1–6 messages in it (uniform, mean 3.5), which is
`DEFAULT_RATE` = 12 messages per active agent per hour. Between two messages of a session the
user reads the reply and types: a think time drawn log-normal (median 12 s, σ 0.6, clipped to
3–90 s), counted from the end of the previous reply. Messages are 2–60 words (log-normal, median
10): everyday questions built from a fixed vocabulary. 8 % of messages set a reminder ("remind me in
N seconds to …", N uniform over 5 s … min(180 s, a third of the run)), which fires during the run
and wakes the agent even if it hibernated; 5 % ask the agent to remember a fact (answered by a skill,
no model). The rest go to the model. A user runs one session at a time: a session that arrives while
the previous one is still going starts when it ends.

Everything is drawn up front from `random.Random(seed)`: the same seed, agents, duration and rate
give the same plan, message for message.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DEFAULT_RATE = 12.0  # messages per active agent per hour: the documented busy hour
MESSAGES_PER_SESSION = (1, 6)
THINK_MEDIAN_S, THINK_SIGMA, THINK_CLIP_S = 12.0, 0.6, (3.0, 90.0)
WORDS_MEDIAN, WORDS_SIGMA, WORDS_CLIP = 10.0, 0.6, (2, 60)
REMINDER_SHARE, MEMORY_SHARE = 0.08, 0.05
REMINDER_MIN_S, REMINDER_MAX_S = 5.0, 180.0

CHAT, REMINDER, MEMORY = "chat", "reminder", "memory"

_OPENERS = (
    "Can you suggest", "What is a good way to plan", "Could you explain", "Give me a quick idea for",
    "How should I think about", "Help me write a short note about", "What do you know about",
    "Any tips for", "Summarise in two lines", "What would you recommend for",
)
_WORDS = (
    "dinner", "a birthday", "my garden", "the weekend", "a train trip", "running", "bread", "tomatoes",
    "a meeting", "my budget", "the kids", "a rainy day", "coffee", "a book club", "my bike", "the dentist",
    "a picnic", "soup", "a quiet morning", "emails", "a small flat", "winter", "a new laptop", "yoga",
    "a phone call", "groceries", "a short walk", "the neighbours", "a gift", "my sister", "a lamp",
    "the river", "an old friend", "a playlist", "rice", "a warm jacket", "the market", "a puzzle",
)
_TASKS = ("stretch", "call mum", "water the plants", "take a break", "check the oven", "drink water",
          "send the invoice", "walk the dog", "close the window", "buy milk")
_FACTS = ("my favourite colour is green", "I live near the river", "my dog is called Pepper",
          "I prefer short answers", "I am learning Spanish", "my sister's birthday is in May")


@dataclass(frozen=True)
class Message:
    kind: str  # chat | reminder | memory
    text: str
    think_s: float  # wait after the previous reply of the session (0 for a session's first message)
    reminder_s: float | None = None  # the reminder's delay, for kind == reminder
    reminder_text: str | None = None  # what the fired reminder says ("⏰ Reminder: <this>")


@dataclass(frozen=True)
class Session:
    start_s: float  # arrival, seconds after the run starts
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class UserPlan:
    user: int
    sessions: tuple[Session, ...]

    @property
    def messages(self) -> int:
        return sum(len(s.messages) for s in self.sessions)


@dataclass(frozen=True)
class Workload:
    agents: int
    duration_s: float
    rate: float  # messages per agent per hour
    seed: int
    users: tuple[UserPlan, ...] = field(repr=False)

    @property
    def sessions_per_hour(self) -> float:
        return session_rate(self.rate)

    @property
    def planned_messages(self) -> int:
        return sum(u.messages for u in self.users)

    def describe(self) -> dict[str, object]:
        low, high = MESSAGES_PER_SESSION
        return {
            "rate_messages_per_agent_per_hour": self.rate,
            "sessions_per_agent_per_hour": round(self.sessions_per_hour, 3),
            "messages_per_session": f"uniform {low}–{high}",
            "think_time_s": f"log-normal, median {THINK_MEDIAN_S:g}, sigma {THINK_SIGMA:g}, "
            f"clipped {THINK_CLIP_S[0]:g}–{THINK_CLIP_S[1]:g}",
            "message_words": f"log-normal, median {WORDS_MEDIAN:g}, sigma {WORDS_SIGMA:g}, "
            f"clipped {WORDS_CLIP[0]}–{WORDS_CLIP[1]}",
            "reminder_share": REMINDER_SHARE,
            "reminder_delay_s": f"uniform {REMINDER_MIN_S:g}–{reminder_max_s(self.duration_s):g}",
            "memory_share": MEMORY_SHARE,
            "seed": self.seed,
            "planned_sessions": sum(len(u.sessions) for u in self.users),
            "planned_messages": self.planned_messages,
        }


def session_rate(rate: float) -> float:
    low, high = MESSAGES_PER_SESSION
    return rate / ((low + high) / 2)


def reminder_max_s(duration_s: float) -> float:
    return max(REMINDER_MIN_S, min(REMINDER_MAX_S, duration_s / 3))


def make_workload(agents: int, duration_s: float, *, rate: float = DEFAULT_RATE, seed: int = 1) -> Workload:
    """Every user's sessions and messages for a run, from one seed (user i's plan depends only on seed and i)."""
    if agents < 0 or duration_s <= 0 or rate < 0:
        raise ValueError("agents >= 0, duration_s > 0 and rate >= 0 are required")
    users = tuple(_user_plan(i, duration_s, rate, seed) for i in range(agents))
    return Workload(agents, duration_s, rate, seed, users)


def _user_plan(user: int, duration_s: float, rate: float, seed: int) -> UserPlan:
    rng = random.Random(f"{seed}:{user}")
    per_s = session_rate(rate) / 3600.0
    sessions: list[Session] = []
    t = rng.expovariate(per_s) if per_s > 0 else math.inf
    k = 0
    while t < duration_s:
        n = rng.randint(*MESSAGES_PER_SESSION)
        messages = tuple(_message(rng, user, k + j, duration_s, first=j == 0) for j in range(n))
        k += n
        sessions.append(Session(t, messages))
        t += rng.expovariate(per_s)
    return UserPlan(user, tuple(sessions))


def _message(rng: random.Random, user: int, index: int, duration_s: float, *, first: bool) -> Message:
    think = 0.0 if first else _clip(rng.lognormvariate(math.log(THINK_MEDIAN_S), THINK_SIGMA), *THINK_CLIP_S)
    roll = rng.random()
    if roll < REMINDER_SHARE:
        delay = round(rng.uniform(REMINDER_MIN_S, reminder_max_s(duration_s)))
        what = f"{rng.choice(_TASKS)} (ref u{user}m{index})"
        return Message(REMINDER, f"remind me in {delay} seconds to {what}", think, float(delay), what)
    if roll < REMINDER_SHARE + MEMORY_SHARE:
        return Message(MEMORY, f"remember that {rng.choice(_FACTS)}", think)
    words = int(_clip(rng.lognormvariate(math.log(WORDS_MEDIAN), WORDS_SIGMA), *WORDS_CLIP))
    opener = rng.choice(_OPENERS)
    body: list[str] = []
    while len(opener.split()) + sum(len(w.split()) for w in body) < words:
        body.append(rng.choice(_WORDS))
    text = f"{opener} {' and '.join(body) if body else rng.choice(_WORDS)}?"
    return Message(CHAT, text, think)


def _clip(x: float, low: float, high: float) -> float:
    return min(high, max(low, x))
