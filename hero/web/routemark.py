"""The gateway's routing marker: proof that a request was sent on by a gateway of this cluster.

A gateway that sends a request on to the node hosting its agent marks it so the receiving node answers it
itself instead of placing it again. A client must not be able to make a node skip placement, so the
marker is an HMAC (keyed from the cluster key, which only the cluster's nodes hold) over the sending node,
the time, the method, the path and the agent; it is accepted only within `window_s` of being made (clocks
of a cluster's machines agree to a few seconds). Anything else in that header is not a marker.
"""

from __future__ import annotations

import hashlib
import hmac
import time

WINDOW_S = 30.0


class RouteMarker:
    def __init__(self, key: bytes, node_id: str, *, window_s: float = WINDOW_S) -> None:
        self._key = key
        self._node_id = node_id
        self.window_s = window_s

    def make(self, method: str, path: str, agent_id: str, *, now: float | None = None) -> bytes:
        """The marker this node puts on a request it sends on."""
        stamp = str(int((time.time() if now is None else now) * 1000))
        return f"{self._node_id}.{stamp}.{self._mac(self._node_id, stamp, method, path, agent_id)}".encode()

    def check(self, marker: str, method: str, path: str, agent_id: str, *, now: float | None = None) -> bool:
        """Whether `marker` was made by a node of this cluster for this request, recently."""
        node_id, _, rest = marker.partition(".")
        stamp, _, mac = rest.partition(".")
        if not (node_id and stamp.isdigit() and mac):
            return False
        age_s = (time.time() if now is None else now) - int(stamp) / 1000
        if abs(age_s) > self.window_s:
            return False
        return hmac.compare_digest(mac, self._mac(node_id, stamp, method, path, agent_id))

    def _mac(self, node_id: str, stamp: str, method: str, path: str, agent_id: str) -> str:
        message = "\n".join((node_id, stamp, method.upper(), path, agent_id)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
