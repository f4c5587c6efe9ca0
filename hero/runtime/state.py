"""An agent's state as stored: its encoding, and the repair of invalid text on the way back.

The state is JSON written with `ensure_ascii`, so text that is not valid
Unicode (a lone UTF-16 surrogate such as "\\ud800", accepted before the web edge
refused it) is stored as an escape and comes back as a `str` that cannot be
encoded: the model's tokenizer and every JSON response then fail for that user
forever. Decoding repairs it: each lone surrogate becomes U+FFFD.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hero import unicode

# A high surrogate escape not followed by a low one, or a low one not preceded by a high one.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def encode_state(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def decode_state(raw: bytes) -> tuple[dict[str, Any], bool]:
    """The state stored as `raw` (empty: a new agent) and whether invalid text in it was repaired.

    Raises ValueError if `raw` is not a JSON object.
    """
    if not raw:
        return {}, False
    state = json.loads(raw)
    if not isinstance(state, dict):
        raise ValueError(f"the stored state is a JSON {type(state).__name__}, not an object")
    if _LONE_SURROGATE.search(raw) is None:
        return state, False
    repaired = repair(state)
    return repaired, repaired != state


def repair(value: Any) -> Any:
    """A JSON value with every string (keys too) repaired."""
    if isinstance(value, str):
        return unicode.repair(value)
    if isinstance(value, dict):
        return {unicode.repair(k): repair(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repair(v) for v in value]
    return value
