"""Max-min fair share of the power left for agents: whom the governor gates when the node is at its budget.

Water-filling: light agents get what they ask for in full, the heavy ones split
what is left equally, so an agent is gated only for drawing more than everyone
could have; light agents never are.
"""

from __future__ import annotations

from collections.abc import Mapping

OVER_SHARE = 1.0001  # demand above its share by more than float noise


def max_min_shares(demands: Mapping[str, float], capacity: float) -> dict[str, float]:
    """Max-min fair allocation (water-filling): small demands are met in full, the rest split equally."""
    shares: dict[str, float] = {}
    remaining = max(0.0, capacity)
    items = sorted(demands.items(), key=lambda kv: kv[1])
    n = len(items)
    for i, (agent, demand) in enumerate(items):
        fair = remaining / (n - i)
        if demand <= fair:
            shares[agent] = demand
            remaining -= demand
        else:
            for other, _ in items[i:]:
                shares[other] = fair
            break
    return shares


def over_share(demands: Mapping[str, float], capacity: float) -> dict[str, float]:
    """The agents whose demand exceeds their max-min share of `capacity`, each with that share.

    Nobody is over when the demands fit in `capacity` altogether.
    """
    if not demands or sum(demands.values()) <= capacity:
        return {}
    shares = max_min_shares(demands, capacity)
    return {agent: shares[agent] for agent, demand in demands.items() if demand > shares[agent] * OVER_SHARE}
