"""A skill bundle on disk: its content hash, its developer's Ed25519 signature (`skill.sig`), and its verification.

The hash is BLAKE3 over every file of the bundle (path, size, bytes, in path
order), so changing, adding or removing any file changes it; Python's caches and
the signature itself are left out. The signature covers the skill's name,
version and that hash. A node loads a bundle only if it is signed, unchanged
since, and signed by a key it trusts (`trust.py`); otherwise `SkillRefused` names
the skill and the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import blake3
import nacl.exceptions
import nacl.signing

from hero.errors import SkillRefused, UsageError
from hero.identity import verify_signature
from hero.skills.manifest import Manifest, load_manifest

SIGNATURE = "skill.sig"
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
DOMAIN = b"hero-skill-v1\n"
MAX_BUNDLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Signature:
    name: str
    version: str
    hash: str  # hex BLAKE3 of the bundle
    key: str  # the developer's Ed25519 public key, hex
    signature: str  # hex

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "hash": self.hash, "key": self.key,
                "signature": self.signature}


def files(folder: Path) -> list[tuple[str, Path]]:
    """The bundle's files as (relative POSIX path, path), in path order; a symlink is refused (it could point
    anywhere)."""
    out: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for entry in [*dirs, *names]:
            if (Path(root) / entry).is_symlink():
                raise SkillRefused(f"{folder}: {Path(root, entry).relative_to(folder)} is a symlink; a bundle "
                                   "holds files only")
        for name in names:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel != SIGNATURE:
                out.append((rel, path))
    return sorted(out)


def bundle_hash(folder: Path) -> str:
    digest = blake3.blake3()
    total = 0
    for rel, path in files(folder):
        data = path.read_bytes()
        total += len(data)
        if total > MAX_BUNDLE_BYTES:
            raise SkillRefused(f"{folder}: a bundle is at most {MAX_BUNDLE_BYTES >> 20} MiB")
        name = rel.encode()
        digest.update(b"%d:%s\n%d\n" % (len(name), name, len(data)))
        digest.update(data)
    return digest.hexdigest()


def _message(name: str, version: str, digest: str) -> bytes:
    return DOMAIN + f"{name}\n{version}\n{digest}".encode()


def load_key(path: Path) -> nacl.signing.SigningKey:
    """A developer's secret key file: 64 hex digits (the Ed25519 seed), as `hero skill keygen` writes it."""
    try:
        text = path.read_text().strip()
        return nacl.signing.SigningKey(bytes.fromhex(text))
    except FileNotFoundError:
        raise UsageError(f"key file not found: {path}") from None
    except (OSError, ValueError, nacl.exceptions.CryptoError):
        raise UsageError(f"{path}: not a secret key (64 hex digits)") from None


def sign(folder: Path, key: nacl.signing.SigningKey) -> Signature:
    """Sign the bundle in `folder` and write its `skill.sig`."""
    manifest = load_manifest(folder)
    digest = bundle_hash(folder)
    signed = key.sign(_message(manifest.name, manifest.version, digest)).signature
    sig = Signature(manifest.name, manifest.version, digest, key.verify_key.encode().hex(), signed.hex())
    (folder / SIGNATURE).write_text(json.dumps(sig.to_json(), indent=1) + "\n")
    return sig


def read_signature(folder: Path, name: str) -> Signature:
    path = folder / SIGNATURE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SkillRefused(f"skill {name}: unsigned ({folder} has no {SIGNATURE}); sign it with "
                           "'hero skill sign PATH --key KEY'") from None
    except (OSError, ValueError) as exc:
        raise SkillRefused(f"skill {name}: {path} is not a signature file: {exc}") from None
    fields = Signature.__dataclass_fields__
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), str) for k in fields):
        raise SkillRefused(f"skill {name}: {path} is not a signature file (it needs {', '.join(fields)})")
    return Signature(**{k: raw[k] for k in fields})


def verify(folder: Path, trusted: set[str]) -> tuple[Manifest, Signature]:
    """The bundle's manifest and signature if it is signed, unchanged and signed by a trusted key; else
    `SkillRefused` naming the skill and the reason."""
    manifest = load_manifest(folder)
    sig = read_signature(folder, manifest.name)
    digest = bundle_hash(folder)
    if (sig.name, sig.version) != (manifest.name, manifest.version):
        raise SkillRefused(f"skill {manifest.name}: the signature is for {sig.name} {sig.version}, "
                           f"the manifest says {manifest.name} {manifest.version}")
    if digest != sig.hash:
        raise SkillRefused(f"skill {manifest.name}: tampered: the bundle changed since it was signed "
                           f"(hash {digest[:16]}…, signed {sig.hash[:16]}…)")
    try:
        signature = bytes.fromhex(sig.signature)
    except ValueError:
        signature = b""
    if not verify_signature(sig.key, _message(sig.name, sig.version, sig.hash), signature):
        raise SkillRefused(f"skill {manifest.name}: bad signature: it does not verify with key {sig.key[:16]}…")
    if sig.key not in trusted:
        raise SkillRefused(f"skill {manifest.name}: signed by key {sig.key}, which this node does not trust "
                           "(hero skill trust KEY)")
    return manifest, sig
