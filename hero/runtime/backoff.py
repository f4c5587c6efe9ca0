"""The runtime's retry policies: how long it waits before trying a failed thing again, and when it gives up.

Three things are retried: a hibernation whose final write failed (the agent
stays in memory until it succeeds), a timer whose delivery or turn failed, and
reading a damaged agent's objects again. Each doubles its delay from `first_s`
up to `max_s` (`hero.backoff.Backoff`); a timer whose turn keeps raising is set
aside after `attempts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hero.backoff import Backoff


@dataclass(frozen=True)
class Retries:
    """The node's retry policies; tests shorten them."""

    hibernate: Backoff = field(default_factory=lambda: Backoff(first_s=1.0, max_s=60.0))
    timer: Backoff = field(default_factory=lambda: Backoff(first_s=30.0, max_s=3600.0, attempts=5))
    damaged: Backoff = field(default_factory=lambda: Backoff(first_s=10.0, max_s=600.0))
