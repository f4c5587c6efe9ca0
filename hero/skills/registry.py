"""The skills a node has: shipped ones, installed packages (entry point group `hero.skills`), bundle folders under
`DATA/skills/`, and in dev mode folders that reload when they change.

Every bundle but a dev one must verify (`bundle.verify`: signed, unchanged, by a
trusted key) before any of its code runs; a refused bundle costs only itself: it is
listed with the reason (`hero skill list`, the log) and the node goes on. A name is
taken by the first source that has it (shipped, then entry points, then folders); a
dev folder replaces a skill of the same name, which is what dev mode is for.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hero.errors import SkillRefused
from hero.skills.bundle import bundle_hash, files, verify
from hero.skills.manifest import MANIFEST, load_manifest
from hero.skills.skill import Skill, collect, import_bundle

log = logging.getLogger("hero.skills")
GROUP = "hero.skills"
DEV_CHECK_S = 0.25  # a dev folder is looked at again at most this often (on an agent's turn, never by a timer)


def shipped_dir() -> Path | None:
    """`agents/skills/` of this installation: the skills Hero ships, signed with its own key."""
    spec = importlib.util.find_spec("agents")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "skills"
    return path if path.is_dir() else None


def bundles_in(folder: Path) -> list[Path]:
    """`folder` itself if it is a bundle, else its sub-folders that are."""
    if (folder / MANIFEST).is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def entry_point_folders() -> list[tuple[str, Path | None, str]]:
    """(entry point name, bundle folder, error) for each installed package in the `hero.skills` group. The
    package is located, never imported, before its bundle is verified."""
    out: list[tuple[str, Path | None, str]] = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        module = ep.value.partition(":")[0].strip()
        top, *rest = module.split(".")
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError) as exc:
            out.append((ep.name, None, f"cannot be found: {exc}"))
            continue
        if spec is None or not spec.submodule_search_locations:
            out.append((ep.name, None, f"{module!r} is not an installed package (a bundle is a package folder)"))
            continue
        folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
        out.append((ep.name, folder, ""))
    return out


def load_bundle(folder: Path, trusted: set[str], source: str) -> Skill:
    manifest, sig = verify(folder, trusted)
    module = import_bundle(folder, manifest, sig.hash)
    return collect(Skill(manifest, source, folder, sig.hash, sig.key), module)


def load_dev(folder: Path) -> Skill:
    """A dev bundle: not verified (it is being written), loaded under its current hash."""
    manifest = load_manifest(folder)
    digest = bundle_hash(folder)
    module = import_bundle(folder, manifest, digest)
    return collect(Skill(manifest, "dev", folder, digest, None), module)


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for rel, path in files(folder):
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((rel, st.st_mtime_ns, st.st_size))
    return tuple(out)


class SkillRegistry:
    def __init__(
        self,
        *,
        trusted: Callable[[], set[str]],
        shipped: Path | None = None,
        folders: Sequence[Path] = (),
        dev: Sequence[Path] = (),
        entry_points: bool = True,
    ) -> None:
        self._trusted = trusted
        self._shipped = shipped
        self._folders = list(folders)
        self._dev = list(dev)
        self._entry_points = entry_points
        self._skills: dict[str, Skill] = {}
        self.refused: dict[str, str] = {}  # where (skill name or folder) -> why
        self._stamps: dict[Path, tuple[tuple[str, int, int], ...]] = {}
        self._checked_at = 0.0
        self.reloads = 0

    def load(self) -> None:
        """Load every source once (at node start); refusals are logged and listed, never fatal."""
        trusted = self._trusted()
        self._skills.clear()
        self.refused.clear()
        if self._shipped is not None:
            self._add_all(bundles_in(self._shipped), trusted, "shipped")
        if self._entry_points:
            for name, folder, error in entry_point_folders():
                if folder is None:
                    self._refuse(f"entry point {name}", SkillRefused(f"skill package {name}: {error}"))
                else:
                    self._add_all([folder], trusted, "entry point")
        for folder in self._folders:
            self._add_all(bundles_in(folder), trusted, "folder")
        for folder in self._dev:
            for bundle in bundles_in(folder):
                self._load_dev(bundle)

    def _add_all(self, folders: Iterable[Path], trusted: set[str], source: str) -> None:
        for folder in folders:
            try:
                skill = load_bundle(folder, trusted, source)
            except SkillRefused as exc:
                self._refuse(str(folder), exc)
                continue
            if skill.name in self._skills:
                taken = self._skills[skill.name]
                self._refuse(str(folder), SkillRefused(
                    f"skill {skill.name}: the name is taken by the {taken.source} skill in {taken.folder}"))
                continue
            self._skills[skill.name] = skill

    def _load_dev(self, folder: Path) -> None:
        self._stamps[folder] = _stamp(folder)
        try:
            skill = load_dev(folder)
        except SkillRefused as exc:
            self._refuse(str(folder), exc)
            return
        self.refused.pop(str(folder), None)
        self._skills[skill.name] = skill
        log.warning("dev skill %s %s loaded unsigned from %s (hash %s)", skill.name, skill.version, folder,
                    skill.hash[:12])

    def _refuse(self, where: str, exc: SkillRefused) -> None:
        self.refused[where] = exc.message
        log.error("%s", exc.message)

    def _reload_changed(self) -> None:
        now = time.monotonic()
        if not self._dev or now - self._checked_at < DEV_CHECK_S:
            return
        self._checked_at = now
        for root in self._dev:
            for folder in bundles_in(root):
                if self._stamps.get(folder) != _stamp(folder):
                    self.reloads += 1
                    self._load_dev(folder)

    def skills(self) -> dict[str, Skill]:
        """Every loaded skill by name (a changed dev skill is loaded again first)."""
        self._reload_changed()
        return self._skills

    def get(self, name: str) -> Skill | None:
        return self.skills().get(name)

    def describe(self) -> dict[str, Any]:
        return {
            "skills": [skill.describe() for skill in sorted(self.skills().values(), key=lambda s: s.name)],
            "refused": [{"where": where, "reason": reason} for where, reason in sorted(self.refused.items())],
        }
