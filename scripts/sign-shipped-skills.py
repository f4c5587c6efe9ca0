"""Sign the skills shipped in agents/skills/ with Hero's release key (after changing one of them).

    .venv/bin/python scripts/sign-shipped-skills.py --key PATH/TO/hero-skills-release.key

The key's public half is `hero.skills.trust.HERO_KEY`; tests/test_skills_signing.py fails while a shipped
skill's signature does not match its files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hero.skills.bundle import load_key, sign
from hero.skills.registry import bundles_in
from hero.skills.trust import HERO_KEY

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", type=Path, required=True, help="Hero's release key (64 hex digits)")
    args = parser.parse_args()
    key = load_key(args.key)
    if key.verify_key.encode().hex() != HERO_KEY:
        print("that is not Hero's release key (hero.skills.trust.HERO_KEY)", file=sys.stderr)
        return 2
    for folder in bundles_in(ROOT / "agents" / "skills"):
        sig = sign(folder, key)
        print(f"signed {sig.name} {sig.version} {sig.hash[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
