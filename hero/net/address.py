"""A node's overlay identity: its X25519 key, Mycelium address and /64, router id, and signatures.

The address scheme is Mycelium's (`hero.identity.overlay_address`). Mycelium
nodes have only an X25519 key, so Hero signs route announcements and agent
records with XEdDSA (Signal's scheme): an Ed25519 signature made with the
X25519 secret scalar, checked against the Edwards form of the X25519 public
key. Anyone who knows a router id can verify what that router signed; no
second key, no certificate, and Mycelium key files work unchanged.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions

from hero.errors import UsageError
from hero.identity import overlay_address

KEY_BYTES = 32
ROUTER_ID_BYTES = 40
SIG_BYTES = 64
OVERLAY_NET = ipaddress.IPv6Network("400::/7")

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_XEDDSA_PREFIX = b"\xfe" + b"\xff" * 31


def subnet_of(address: ipaddress.IPv6Address) -> ipaddress.IPv6Network:
    """The /64 a node owns and announces: the one holding its key-derived address."""
    return ipaddress.IPv6Network((int(address) >> 64 << 64, 64))


def address_of(public: bytes) -> ipaddress.IPv6Address:
    return overlay_address(public)


def in_overlay(address: ipaddress.IPv6Address) -> bool:
    return address in OVERLAY_NET


@dataclass(frozen=True)
class RouterId:
    """pubkey[32] ‖ zone u16 ‖ 6 bytes fresh per start: a new routing source after every restart."""

    public: bytes
    zone: int = 0
    instance: bytes = b"\0" * 6

    def encode(self) -> bytes:
        return self.public + self.zone.to_bytes(2, "big") + self.instance

    @classmethod
    def decode(cls, raw: bytes) -> RouterId:
        if len(raw) != ROUTER_ID_BYTES:
            raise ValueError("router id must be 40 bytes")
        return cls(bytes(raw[:32]), int.from_bytes(raw[32:34], "big"), bytes(raw[34:40]))

    @property
    def address(self) -> ipaddress.IPv6Address:
        return overlay_address(self.public)

    @property
    def subnet(self) -> ipaddress.IPv6Network:
        return subnet_of(self.address)

    def __str__(self) -> str:
        return f"{self.public.hex()[:12]}…/{self.instance.hex()}"


class Identity:
    """The node's X25519 key pair and everything derived from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("an X25519 secret key is 32 bytes")
        self.secret = bytes(secret)
        self.public = sodium.crypto_scalarmult_base(self.secret)
        self.address = overlay_address(self.public)
        self.subnet = subnet_of(self.address)
        self.router_id = RouterId(self.public, 0, secrets.token_bytes(6))
        self._edwards_secret, self._edwards_public = _xeddsa_keys(self.secret)

    @classmethod
    def generate(cls) -> Identity:
        return cls(secrets.token_bytes(KEY_BYTES))

    def dh(self, public: bytes) -> bytes:
        return sodium.crypto_scalarmult(self.secret, public)

    def sign(self, message: bytes) -> bytes:
        """XEdDSA: an Ed25519 signature any holder of our X25519 public key can check."""
        a = self._edwards_secret
        r = int.from_bytes(
            hashlib.sha512(_XEDDSA_PREFIX + a.to_bytes(32, "little") + message + os.urandom(64)).digest(), "little"
        ) % _L
        big_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little"))
        h = int.from_bytes(hashlib.sha512(big_r + self._edwards_public + message).digest(), "little") % _L
        s = (r + h * a) % _L
        return big_r + s.to_bytes(32, "little")


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Check an XEdDSA signature against an X25519 public key."""
    if len(public) != KEY_BYTES or len(signature) != SIG_BYTES:
        return False
    try:
        sodium.crypto_sign_open(signature + message, _edwards_from_montgomery(public))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True


def _edwards_from_montgomery(public: bytes) -> bytes:
    u = int.from_bytes(public, "little") & ((1 << 255) - 1)
    y = (u - 1) * pow(u + 1, _P - 2, _P) % _P
    return y.to_bytes(32, "little")  # sign bit 0, as XEdDSA fixes it


def _xeddsa_keys(secret: bytes) -> tuple[int, bytes]:
    clamped = bytearray(secret)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    edwards = bytearray(sodium.crypto_scalarmult_ed25519_base_noclamp(bytes(clamped)))
    a = int.from_bytes(clamped, "little") % _L
    if edwards[31] & 0x80:  # XEdDSA uses the key whose Edwards point has sign bit 0
        a = (-a) % _L
        edwards[31] &= 0x7F
    return a, bytes(edwards)


def load_or_create_key(path: Path) -> Identity:
    """Mycelium's key file: the raw 32-byte X25519 secret, created (mode 0600) if missing."""
    path = Path(path)
    if path.exists():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
        if len(data) != KEY_BYTES:
            raise UsageError(f"key file {path} must hold a raw 32-byte secret key, it has {len(data)} bytes")
        return Identity(data)
    secret = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path)
    except OSError as exc:
        raise UsageError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return Identity(secret)
