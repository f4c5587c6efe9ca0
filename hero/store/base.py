"""Store keys: path-like ASCII names, checked where a key enters the store.

The store's seam (the `StateStore` protocol and its `Version` record) is `hero.seams.store`.
"""

from __future__ import annotations


def check_key(key: str) -> str:
    """Keys are path-like ASCII names; refuse anything that could escape a directory."""
    from hero.errors import BadRequest

    if not key or len(key) > 512:
        raise BadRequest("store key must be 1..512 characters", field="key")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@")
    if any(c not in allowed for c in key) or key.startswith("/") or ".." in key.split("/"):
        raise BadRequest(f"invalid store key {key!r}", field="key")
    return key
