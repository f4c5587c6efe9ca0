"""The cluster's identity: one secret shared by every node of a cluster, and the keys derived from it.

`hero cluster init --out FILE` makes the secret; nodes started with
`--cluster-key FILE` (or `HERO_CLUSTER_KEY`, a path or the key itself) share it.
From it come the store's master key (so every node derives every agent's data
key and reads what the others wrote), an Ed25519 signing key (tokens, login
challenges, manifests and fragment-server requests: so every node verifies
every user's token and accepts every other node's manifests), the token Ray's
authentication uses, and the authority that lets a node host an agent on the
overlay. A node keeps its own keys (`DATA/keys/`) for what is its own: its
node id in leases and its overlay address.

Without a cluster key nothing changes: a node's own keys play every part.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nacl.encoding
import nacl.hash
import nacl.signing

from hero.errors import UsageError
from hero.identity import NodeKeys, b64u, unb64u

PREFIX = "hero-cluster1."


@dataclass(frozen=True)
class ClusterKey:
    secret: bytes

    @classmethod
    def generate(cls) -> ClusterKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def parse(cls, text: str, *, origin: str) -> ClusterKey:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise UsageError(f"{origin}: not a cluster key (one starts with {PREFIX!r}: hero cluster init makes one)")
        try:
            secret = unb64u(text[len(PREFIX):])
        except ValueError:
            secret = b""
        if len(secret) != 32:
            raise UsageError(f"{origin}: the cluster key is corrupt (expected 32 bytes after {PREFIX!r})")
        return cls(secret)

    @classmethod
    def load(cls, spec: str | Path) -> ClusterKey:
        """From a file, or from the key text itself (`HERO_CLUSTER_KEY` may hold either)."""
        text = str(spec).strip()
        if text.startswith(PREFIX):
            return cls.parse(text, origin="cluster key")
        path = Path(text).expanduser()
        try:
            return cls.parse(path.read_text(), origin=str(path))
        except OSError as exc:
            raise UsageError(f"cannot read the cluster key {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not a cluster key (not text)") from None

    def text(self) -> str:
        return PREFIX + b64u(self.secret)

    def write(self, path: Path) -> None:
        """Create `path` (0600); refuse to overwrite a key that exists (it would orphan every agent's data)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"{path} exists: a cluster key is never overwritten (choose another --out)") from None
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w") as f:
            f.write(self.text() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def derive(self, purpose: str) -> bytes:
        return nacl.hash.blake2b(
            purpose.encode(), key=self.secret, digest_size=32, encoder=nacl.encoding.RawEncoder
        )

    @property
    def master(self) -> bytes:
        """The store's master key: every agent's data key derives from it."""
        return self.derive("hero-cluster/master")

    @property
    def signing(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.derive("hero-cluster/signing"))

    @property
    def cluster_id(self) -> str:
        """The cluster's public key (hex): the signer of its tokens and manifests, trusted by fragment servers."""
        return self.signing.verify_key.encode().hex()

    @property
    def ray_token(self) -> str:
        """The token of Ray's token authentication (RAY_AUTH_TOKEN), the same on every node of the cluster."""
        return self.derive("hero-cluster/ray-auth-token").hex()

    def shared_keys(self, own: NodeKeys) -> NodeKeys:
        """Keys for what the cluster shares (store, tokens): the cluster's signing and master keys, with the
        node's own overlay key."""
        return NodeKeys(self.signing, own.overlay, self.master)


def shared_keys(own: NodeKeys, cluster_key: str | Path | None) -> NodeKeys:
    """The keys a node's store and token checks use: the cluster's when it has a cluster key, else its own."""
    if not cluster_key:
        return own
    return ClusterKey.load(cluster_key).shared_keys(own)
