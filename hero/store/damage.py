"""Damaged objects: what a scrub found it cannot read or rebuild, named for the operator.

An object must not vanish because its manifests rotted: a scrub lists every object
directory, and one that holds manifests none of which can be verified is reported,
not skipped. Its name is sealed inside those manifests under the node's key, so it
is recovered from the sealed fields of any replica whose signature no longer checks
(the seal is authenticated, so a name recovered this way is the true one); when no
replica keeps even those fields, the object is reported by its id.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

MAX_LISTED = 100  # damaged objects listed in one report (all are counted)
_KEY = re.compile(rb'"key":"([0-9a-f]{2,4096})"')
_NONCE = re.compile(rb'"key_nonce":"([0-9a-f]{48})"')


@dataclass(frozen=True)
class Damage:
    """One object (or one version of it) that could not be read or rebuilt, and why."""

    key: str | None  # None when no manifest replica still names it
    oid: str
    version: int | None  # None when the object as a whole could not be identified
    error: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identity:
    """What an object directory on the backends is to this node."""

    kind: Literal["ours", "foreign", "empty", "damaged"]
    key: str | None = None
    error: str = ""


def sealed_key_fields(blob: bytes) -> tuple[bytes, bytes] | None:
    """(nonce, sealed key) of a manifest replica, found even if the rest of it is damaged."""
    key, nonce = _KEY.search(blob), _NONCE.search(blob)
    if key is None or nonce is None or len(key.group(1)) % 2:
        return None
    return bytes.fromhex(nonce.group(1).decode()), bytes.fromhex(key.group(1).decode())


def describe(damaged: list[dict[str, Any]], limit: int = 10) -> list[str]:
    """One line per damaged object or version (`Damage.to_json` records), for the CLI."""
    lines = []
    for d in damaged[:limit]:
        name = d["key"] if d["key"] is not None else f"object {d['oid'][:16]}… (its name is unreadable)"
        version = f" version {d['version']}" if d["version"] is not None else ""
        lines.append(f"  damaged: {name}{version}: {d['error']}")
    if len(damaged) > limit:
        lines.append(f"  … and {len(damaged) - limit} more (--json lists them)")
    return lines
