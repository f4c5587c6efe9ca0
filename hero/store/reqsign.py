"""Signed requests between a node and its fragment servers.

The node signs method, target, time and the body's BLAKE3 hash with its
Ed25519 key; a fragment server accepts only node keys it was told to trust,
only within a clock window, and each signature only once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping

import blake3

from hero.errors import Forbidden, Unauthorized
from hero.identity import NodeKeys, verify_signature

NODE = "x-hero-node"
TIME = "x-hero-time"
SIGNATURE = "x-hero-signature"
MAX_SKEW_S = 300.0


def message(method: str, target: str, timestamp: str, body: bytes) -> bytes:
    return f"hero-frag/1\n{method.upper()}\n{target}\n{timestamp}\n{blake3.blake3(body).hexdigest()}".encode()


def sign_headers(keys: NodeKeys, method: str, target: str, body: bytes) -> dict[str, str]:
    timestamp = f"{time.time():.6f}"
    return {
        NODE: keys.node_id,
        TIME: timestamp,
        SIGNATURE: keys.sign(message(method, target, timestamp, body)).hex(),
    }


class Verifier:
    """Checks request signatures against a trusted set; remembers recent signatures to refuse replays."""

    def __init__(self, trusted: Iterable[str], *, max_skew_s: float = MAX_SKEW_S) -> None:
        self.trusted = {t.lower() for t in trusted}
        self.max_skew_s = max_skew_s
        self._seen: set[str] = set()
        self._expiry: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], method: str, target: str, body: bytes) -> str:
        node, timestamp, signature = headers.get(NODE), headers.get(TIME), headers.get(SIGNATURE)
        if not node or not timestamp or not signature:
            raise Unauthorized("request is not signed")
        node = node.lower()
        if node not in self.trusted:
            raise Forbidden(f"node {node[:16]}… is not trusted by this fragment server")
        try:
            sent = float(timestamp)
            raw = bytes.fromhex(signature)
        except ValueError:
            raise Unauthorized("malformed request signature") from None
        now = time.time()
        if abs(now - sent) > self.max_skew_s:
            raise Unauthorized("request time is outside the allowed clock skew")
        if not verify_signature(node, message(method, target, timestamp, body), raw):
            raise Unauthorized("bad request signature")
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.discard(self._expiry.popleft()[1])
            if signature in self._seen:
                raise Unauthorized("replayed request")
            self._seen.add(signature)
            self._expiry.append((now + 2 * self.max_skew_s, signature))
        return node
