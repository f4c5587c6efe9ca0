"""QSS settings: defaults that run on one box, overridden by `DATA/storage.toml`, then by the caller.

```toml
k = 16                  # data fragments
m = 4                   # parity fragments
write_quorum = 17       # fragments that must be durable for a put to succeed (default k + 1)
zstd_level = 3
fsync = true            # fsync fragments and manifests of local directory backends
local_backends = 20     # directory backends under DATA/backends/NN (0: only the ones below)
local_location = "local"
scrub_rate_mb_s = 16.0
scrub_interval_s = 86400
keep_versions = 0       # > 0: the node runs `gc --keep N` every gc_interval_s (0 keeps every version)
gc_interval_s = 3600
trusted_signers = []    # other nodes whose manifests this node accepts

[[backend]]
url = "http://10.1.2.3:9400"   # a `hero storage serve` fragment server
location = "site-b"

[[backend]]
dir = "/mnt/disk2/qss"         # another directory, e.g. a second disk
location = "disk2"
```
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hero.errors import UsageError
from hero.store.erasure import MAX_FRAGMENTS

FILE = "storage.toml"
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    location: str
    url: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class QSSConfig:
    k: int = 16
    m: int = 4
    write_quorum: int = 0  # 0: k + 1
    manifest_replicas: int = 0  # 0: m + 1
    codec: str = "auto"
    zstd_level: int = 3
    segment_size: int = 4 << 20
    fsync: bool = True
    local_backends: int = 20
    local_location: str = "local"
    backends: tuple[BackendSpec, ...] = ()
    trusted_signers: tuple[str, ...] = ()
    scrub_rate_mb_s: float = 16.0
    scrub_interval_s: float = 86400.0
    keep_versions: int = 0
    gc_interval_s: float = 3600.0
    cpu_workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    io_workers: int = 32
    tune_malloc: bool = True

    @property
    def n(self) -> int:
        return self.k + self.m

    @property
    def quorum(self) -> int:
        return self.write_quorum or min(self.k + 1, self.n)

    @property
    def replicas(self) -> int:
        return self.manifest_replicas or self.m + 1

    @property
    def manifest_quorum(self) -> int:
        """Replicas a version needs to commit: a majority, so two writers can never both win one version."""
        return self.replicas // 2 + 1

    def check(self) -> QSSConfig:
        problems = []
        if self.k < 1 or self.m < 1 or self.n > MAX_FRAGMENTS:
            problems.append(f"need k >= 1, m >= 1, k + m <= {MAX_FRAGMENTS} (k={self.k}, m={self.m})")
        elif not self.k <= self.quorum <= self.n:
            problems.append(f"write_quorum must be between k={self.k} and k+m={self.n}")
        if self.replicas < 1:
            problems.append("manifest_replicas must be >= 1")
        if not -7 <= self.zstd_level <= 22:
            problems.append("zstd_level must be -7..22")
        if not 64 << 10 <= self.segment_size <= 64 << 20:
            problems.append("segment_size must be 64 KiB..64 MiB")
        if self.local_backends < 0 or self.local_backends > 256:
            problems.append("local_backends must be 0..256")
        if self.local_backends == 0 and not self.backends:
            problems.append("no backends: set local_backends or add [[backend]] entries")
        if self.scrub_rate_mb_s <= 0 or self.scrub_interval_s <= 0:
            problems.append("scrub_rate_mb_s and scrub_interval_s must be > 0")
        if self.keep_versions < 0 or self.gc_interval_s <= 0:
            problems.append("keep_versions must be >= 0 and gc_interval_s > 0")
        if self.cpu_workers < 1 or self.io_workers < 1:
            problems.append("cpu_workers and io_workers must be >= 1")
        names = [b.name for b in self.backends] + [f"local-{i:02d}" for i in range(self.local_backends)]
        if len(set(names)) != len(names):
            problems.append("backend names must be unique")
        if problems:
            raise UsageError("storage config: " + "; ".join(problems))
        return self


def load(data_dir: Path, **overrides: Any) -> QSSConfig:
    """Defaults, then DATA/storage.toml, then keyword overrides (None means 'not given')."""
    config = QSSConfig()
    path = Path(data_dir) / FILE
    if path.is_file():
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: {exc}") from None
        config = _from_toml(config, raw, str(path), Path(data_dir))
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(QSSConfig)}
    if unknown:
        raise UsageError(f"unknown storage settings: {', '.join(sorted(unknown))}")
    return replace(config, **given).check()


_SCALARS = {
    "k": int, "m": int, "write_quorum": int, "manifest_replicas": int, "codec": str, "zstd_level": int,
    "segment_size": int, "fsync": bool, "local_backends": int, "local_location": str, "scrub_rate_mb_s": float,
    "scrub_interval_s": float, "keep_versions": int, "gc_interval_s": float, "cpu_workers": int, "io_workers": int,
    "tune_malloc": bool,
}


def _from_toml(config: QSSConfig, raw: dict[str, Any], origin: str, data_dir: Path) -> QSSConfig:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "backend":
            values["backends"] = tuple(_backend(b, i, origin, data_dir) for i, b in enumerate(value))
        elif key == "trusted_signers":
            if not isinstance(value, list) or not all(isinstance(v, str) and len(v) == 64 for v in value):
                raise UsageError(f"{origin}: trusted_signers must be a list of 64-hex node ids")
            values[key] = tuple(v.lower() for v in value)
        elif key in _SCALARS:
            kind = _SCALARS[key]
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
            if not ok or (kind is int and isinstance(value, bool)):
                raise UsageError(f"{origin}: {key} must be {kind.__name__}, got {value!r}")
            values[key] = kind(value)
        else:
            raise UsageError(f"{origin}: unknown setting {key!r}")
    return replace(config, **values)


def _backend(raw: Any, index: int, origin: str, data_dir: Path) -> BackendSpec:
    if not isinstance(raw, dict) or ("url" in raw) == ("dir" in raw):
        raise UsageError(f"{origin}: backend #{index + 1} needs exactly one of url or dir")
    location = raw.get("location")
    if not isinstance(location, str) or not NAME.match(location):
        raise UsageError(f"{origin}: backend #{index + 1} needs a location tag (letters, digits, _ . : -)")
    if "url" in raw:
        url = str(raw["url"]).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{origin}: backend #{index + 1} url must be http(s)://host:port")
        default = f"{parts.hostname}:{parts.port or 80}"
        spec = BackendSpec(str(raw.get("name", default)), location, url=url)
    else:
        path = Path(str(raw["dir"]))
        spec = BackendSpec(str(raw.get("name", f"dir-{index:02d}")), location, path=path if path.is_absolute()
                           else data_dir / path)
    if not NAME.match(spec.name):
        raise UsageError(f"{origin}: backend name {spec.name!r} must be letters, digits, _ . : - (max 64)")
    unknown = set(raw) - {"url", "dir", "location", "name"}
    if unknown:
        raise UsageError(f"{origin}: backend #{index + 1} has unknown keys {sorted(unknown)}")
    return spec
