"""The agent the Ray cluster tests run on every node: it answers at once and deterministically (the cluster, not
the model, is under test), and sets a durable timer when asked ('timer <seconds> <name>')."""

from __future__ import annotations

from tests import doubles


class Echo(doubles.Echo):
    sets_timers = True
