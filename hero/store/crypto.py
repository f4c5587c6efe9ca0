"""Keys and authenticated encryption for QSS: XChaCha20-Poly1305, one key per agent.

Every key comes from the node's master key (`NodeKeys.derive_key`), so a node
with an empty disk and its master key can read everything again. The data key
of an object belongs to its scope, the first two segments of its store key
(`agent/<id>`), so each agent's state is sealed under its own key. Object ids
on backends are keyed hashes of the store key, and the store key itself is
sealed in the manifest: backends see ciphertext and hashes only.
"""

from __future__ import annotations

import os
import threading

import blake3
import nacl.exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from hero.errors import IntegrityError
from hero.identity import NodeKeys

NONCE_BYTES = 24
TAG_BYTES = 16
CIPHER = "xchacha20-poly1305"


def seal(key: bytes, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random 24-byte nonce (safe to draw at random without limit)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def unseal(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes, *, what: str) -> bytes:
    """Decrypt and authenticate; a wrong key, a wrong context or a flipped bit is an error, never garbage."""
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise IntegrityError(f"{what}: authentication failed (wrong key, or the data was altered)") from None


def scope_of(key: str) -> str:
    """The part of a store key that owns a data key: `agent/<id>/state` -> `agent/<id>`."""
    return "/".join(key.split("/")[:2])


class KeyRing:
    """Derived keys of one node, cached: data keys per scope, the manifest key and the object-id key."""

    def __init__(self, keys: NodeKeys) -> None:
        self._keys = keys
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.meta = keys.derive_key("qss:meta")
        self._oid = keys.derive_key("qss:oid")

    def data_key(self, key: str) -> bytes:
        scope = scope_of(key)
        found = self._data.get(scope)
        if found is None:
            with self._lock:
                found = self._data.setdefault(scope, self._keys.derive_key(f"qss:{scope}"))
        return found

    def forget(self, prefix: str) -> None:
        """Drop the cached data keys of every scope under `prefix` (its objects were purged): none stays in memory.

        A data key is derived from the master key, so it can be made again; what it sealed is gone from the backends.
        """
        scope = prefix.rstrip("/")
        with self._lock:
            for name in [s for s in self._data if s == scope or s.startswith(prefix)]:
                del self._data[name]

    def object_id(self, key: str) -> str:
        """The name an object has on backends: a keyed hash, so store keys never appear there."""
        return blake3.blake3(key.encode(), key=self._oid).hexdigest()
