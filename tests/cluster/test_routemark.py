"""The gateway's routing marker: only a node holding the cluster key makes one that another node accepts, for
that request, and only for a short while."""

from __future__ import annotations

import time

from hero.cluster.key import ClusterKey
from hero.web.routemark import RouteMarker

KEY = ClusterKey.generate().derive("hero-cluster/gateway-route")


def test_a_marker_counts_for_its_request_only_and_only_for_a_short_while() -> None:
    sender, receiver = RouteMarker(KEY, "node-a"), RouteMarker(KEY, "node-b", window_s=30.0)
    now = time.time()
    marker = sender.make("POST", "/v1/chat/completions", "agent-1", now=now).decode()
    assert receiver.check(marker, "POST", "/v1/chat/completions", "agent-1", now=now + 1)
    assert not receiver.check(marker, "POST", "/v1/chat/completions", "agent-1", now=now + 31)  # too old
    assert not receiver.check(marker, "GET", "/v1/chat/completions", "agent-1", now=now)
    assert not receiver.check(marker, "POST", "/api/me/messages", "agent-1", now=now)
    assert not receiver.check(marker, "POST", "/v1/chat/completions", "agent-2", now=now)  # another user's agent
    node, stamp, mac = marker.split(".")
    assert not receiver.check(f"{node}.{int(stamp) + 1}.{mac}", "POST", "/v1/chat/completions", "agent-1", now=now)


def test_a_client_cannot_make_a_marker() -> None:
    receiver = RouteMarker(KEY, "node-b")
    now = time.time()
    foreign = RouteMarker(ClusterKey.generate().derive("hero-cluster/gateway-route"), "node-a")
    for forged in ("1", "node-a", "node-a.x.y", f"node-a.{int(now * 1000)}.{'0' * 64}", "",
                   foreign.make("POST", "/mcp", "agent-1", now=now).decode()):
        assert not receiver.check(forged, "POST", "/mcp", "agent-1", now=now), forged
