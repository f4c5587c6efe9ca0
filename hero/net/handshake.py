"""The Noise Protocol Framework (rev 34) with the `hfs` KEM extension, on libsodium and pqcrypto.

Links run `Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2b`: both sides prove
their static X25519 key, session keys come from ephemeral X25519 (forward
secrecy) mixed with an ML-KEM-768 encapsulation (FIPS 203), so traffic
recorded today stays private against a future quantum computer as long as
either problem is hard. `XX` alone (no KEM) is kept for the benchmark and for
peers configured without post-quantum keys; end-to-end sessions between
nodes that already know each other's key run `KKhfs` (one round trip, the
same hybrid: user data is encrypted once, end to end, so that layer must be
as strong as the links).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import nacl.bindings as sodium
import nacl.exceptions
from pqcrypto.kem import ml_kem_768

HASHLEN = 64
DHLEN = 32
MAX_NONCE = 2**64 - 1
_ZEROS32 = b"\0" * 32

PATTERNS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    # name: (pre-message tokens as "i:s"/"r:s", message token lists)
    "XX": ((), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "XXhfs": ((), (("e", "e1"), ("e", "ee", "ekem1", "s", "es"), ("s", "se"))),
    "KK": (("i:s", "r:s"), (("e", "es", "ss"), ("e", "ee", "se"))),
    "KKhfs": (("i:s", "r:s"), (("e", "e1", "es", "ss"), ("e", "ee", "ekem1", "se"))),
}


class HandshakeError(Exception):
    """A handshake message that fails to decrypt or parse: the link is refused and the attempt counted."""


def _nonce(n: int) -> bytes:
    return b"\0\0\0\0" + struct.pack("<Q", n)


class CipherState:
    """ChaCha20-Poly1305 with a 64-bit counter nonce; `rekey` is Noise's one-way key update."""

    __slots__ = ("k", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self.k = key
        self.n = 0

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce space exhausted")
        out = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(self.n), self.k)
        self.n += 1
        return out

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        try:
            out = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, _nonce(self.n), self.k)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise HandshakeError("decryption failed") from None
        self.n += 1
        return out

    def rekey(self) -> None:
        assert self.k is not None
        self.k = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(_ZEROS32, b"", _nonce(MAX_NONCE), self.k)[:32]


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(ck: bytes, ikm: bytes, n: int) -> list[bytes]:
    temp = _hmac(ck, ikm)
    outs = [_hmac(temp, b"\x01")]
    for i in range(2, n + 1):
        outs.append(_hmac(temp, outs[-1] + bytes((i,))))
    return outs


class SymmetricState:
    def __init__(self, protocol: str) -> None:
        name = protocol.encode()
        self.h = name.ljust(HASHLEN, b"\0") if len(name) <= HASHLEN else hashlib.blake2b(name).digest()
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp = hkdf(self.ck, ikm, 2)
        self.cs = CipherState(temp[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.blake2b(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = self.cs.encrypt(self.h, plaintext)
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = self.cs.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1[:32]), CipherState(k2[:32])


class Handshake:
    """One side of a Noise handshake. `write`/`read` alternate; `split()` once `done`."""

    def __init__(
        self,
        pattern: str,
        *,
        initiator: bool,
        static_secret: bytes,
        remote_static: bytes | None = None,
        prologue: bytes = b"",
    ) -> None:
        pre, self._messages = PATTERNS[pattern]
        suffix = "_25519+MLKEM768" if "hfs" in pattern else "_25519"
        self.protocol = f"Noise_{pattern}{suffix}_ChaChaPoly_BLAKE2b"
        self.initiator = initiator
        self.ss = SymmetricState(self.protocol)
        self.ss.mix_hash(prologue)
        self.s = static_secret
        self.s_pub = sodium.crypto_scalarmult_base(static_secret)
        self.e = b""
        self.e_pub = b""
        self.rs = remote_static
        self.re = b""
        self.kem_secret = b""
        self.kem_remote = b""
        self._turn = 0
        for token in pre:
            side, _ = token.split(":")
            mine = (side == "i") == initiator
            key = self.s_pub if mine else remote_static
            if key is None:
                raise ValueError("this pattern needs the remote static key")
            self.ss.mix_hash(key)

    @property
    def done(self) -> bool:
        return self._turn >= len(self._messages)

    @property
    def my_turn(self) -> bool:
        return (self._turn % 2 == 0) == self.initiator

    def _dh(self, local: bytes, remote: bytes) -> bytes:
        try:
            return sodium.crypto_scalarmult(local, remote)
        except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError) as exc:
            raise HandshakeError(f"bad public key: {exc}") from None

    def _mix_dh(self, token: str) -> None:
        a, b = token[0], token[1]  # "es": initiator's e with responder's s
        mine_first = self.initiator
        local_tok, remote_tok = (a, b) if mine_first else (b, a)
        local = self.e if local_tok == "e" else self.s
        remote = self.re if remote_tok == "e" else self.rs
        if not remote:
            raise HandshakeError("remote key missing")
        self.ss.mix_key(self._dh(local, remote))

    def write(self, payload: bytes = b"") -> bytes:
        if self.done or not self.my_turn:
            raise HandshakeError("not our turn to write")
        out = bytearray()
        for token in self._messages[self._turn]:
            if token == "e":
                self.e = sodium.randombytes(32)
                self.e_pub = sodium.crypto_scalarmult_base(self.e)
                out += self.e_pub
                self.ss.mix_hash(self.e_pub)
            elif token == "s":
                out += self.ss.encrypt_and_hash(self.s_pub)
            elif token == "e1":
                kem_public, self.kem_secret = ml_kem_768.keygen()
                out += self.ss.encrypt_and_hash(kem_public)
            elif token == "ekem1":
                ct, shared = ml_kem_768.encaps(self.kem_remote)
                out += self.ss.encrypt_and_hash(ct)
                self.ss.mix_key(shared)
            else:
                self._mix_dh(token)
        out += self.ss.encrypt_and_hash(payload)
        self._turn += 1
        return bytes(out)

    def read(self, message: bytes) -> bytes:
        if self.done or self.my_turn:
            raise HandshakeError("not our turn to read")
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(message):
                raise HandshakeError("handshake message truncated")
            chunk = message[pos : pos + n]
            pos += n
            return chunk

        tag = 16 if self.ss.cs.k is not None else 0
        for token in self._messages[self._turn]:
            if token == "e":
                self.re = take(DHLEN)
                self.ss.mix_hash(self.re)
            elif token == "s":
                n = DHLEN + (16 if self.ss.cs.k is not None else 0)
                self.rs = self.ss.decrypt_and_hash(take(n))
            elif token == "e1":
                n = ml_kem_768.PUBLIC_KEY_SIZE + (16 if self.ss.cs.k is not None else 0)
                self.kem_remote = self.ss.decrypt_and_hash(take(n))
            elif token == "ekem1":
                n = ml_kem_768.CIPHERTEXT_SIZE + (16 if self.ss.cs.k is not None else 0)
                ct = self.ss.decrypt_and_hash(take(n))
                try:
                    shared = ml_kem_768.decaps(self.kem_secret, ct)
                except Exception as exc:  # the binding raises its own error types
                    raise HandshakeError(f"KEM decapsulation failed: {exc}") from None
                self.ss.mix_key(shared)
            else:
                self._mix_dh(token)
            tag = 16 if self.ss.cs.k is not None else 0
        rest = message[pos:]
        if len(rest) < tag:
            raise HandshakeError("handshake payload truncated")
        payload = self.ss.decrypt_and_hash(rest)
        self._turn += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states for this side."""
        if not self.done:
            raise HandshakeError("handshake not finished")
        c1, c2 = self.ss.split()
        return (c1, c2) if self.initiator else (c2, c1)

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h
