"""Which developer keys a node trusts to sign skills: `DATA/skills/trusted.json`, plus Hero's own key.

The skills shipped in `agents/skills/` are signed with Hero's release key, whose
public half is here and trusted by default; an operator adds a developer's key
with `hero skill trust KEY` (and takes it back with `--remove`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hero.errors import UsageError
from hero.files import replace_file

HERO_KEY = "2e6222d3d5b632b2f8e1627ff351860af80fb78ee3980eb6ff3bd63273027bb1"  # signs the shipped skills


def check_key(key: str) -> str:
    key = key.strip().lower()
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise UsageError(f"{key!r} is not a public key (64 hex digits)")
    return key


class TrustStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "skills" / "trusted.json"

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.path} is not valid JSON ({exc}); fix or remove it") from None
        keys = raw.get("keys") if isinstance(raw, dict) else None
        return keys if isinstance(keys, dict) else {}

    def keys(self) -> set[str]:
        """Every trusted key, Hero's own included."""
        return {HERO_KEY, *self._read()}

    def entries(self) -> list[dict[str, Any]]:
        out = [{"key": HERO_KEY, "name": "hero (shipped skills)", "added": None, "builtin": True}]
        out += [{"key": k, "name": v.get("name", ""), "added": v.get("added"), "builtin": False}
                for k, v in sorted(self._read().items()) if isinstance(v, dict)]
        return out

    def add(self, key: str, name: str = "") -> None:
        keys = self._read()
        keys[check_key(key)] = {"name": name, "added": time.time()}
        self._write(keys)

    def remove(self, key: str) -> bool:
        key = check_key(key)
        if key == HERO_KEY:
            raise UsageError("Hero's own key signs the shipped skills and is always trusted")
        keys = self._read()
        found = keys.pop(key, None) is not None
        self._write(keys)
        return found

    def _write(self, keys: dict[str, Any]) -> None:
        replace_file(self.path, json.dumps({"keys": keys}, indent=1).encode())
