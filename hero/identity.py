"""Keys, signatures, tokens and overlay addresses, used by every part.

An agent id is its owner's Ed25519 public key in hex. A node has an Ed25519
signing key (tokens, manifests, requests), an X25519 key (overlay address,
Mycelium scheme) and a 32-byte master key from which per-agent storage keys
are derived. All three live in `DATA/keys/`, the only node files that matter.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import blake3
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.signing
from nacl.public import PrivateKey

from hero import unicode
from hero.errors import BadRequest, Unauthorized

TOKEN_PREFIX = "hero1"
TOKEN_CLAIMS: dict[str, type] = {"sub": str, "name": str, "role": str, "exp": int, "jti": str}
ROLES = ("user", "operator")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the one spelling `b64u` gives for each byte string.

    Python's decoder ignores padding, stray characters and the unused low bits of
    the last character, so several texts decode to the same bytes; a signature
    that verifies must have exactly one text (tokens are compared, revoked and
    logged as text). ValueError otherwise.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u(data) != text:
        raise ValueError("not canonical base64url")
    return data


def check_agent_id(agent_id: str) -> str:
    """An agent id is 64 lowercase hex characters (an Ed25519 public key)."""
    if len(agent_id) != 64 or any(c not in "0123456789abcdef" for c in agent_id):
        raise BadRequest("agent id must be a 64-character hex Ed25519 public key", field="agent_id")
    return agent_id


def overlay_address(x25519_public: bytes) -> ipaddress.IPv6Address:
    """Mycelium's key-tied address: BLAKE3 of the public key, first 16 bytes, byte 0 forced into 400::/7."""
    digest = bytearray(blake3.blake3(x25519_public).digest()[:16])
    digest[0] = 0x04 | (bin(digest[0]).count("1") % 2)
    return ipaddress.IPv6Address(bytes(digest))


@dataclass(frozen=True)
class UserKey:
    """A user's Ed25519 key pair; the public half is their agent id."""

    signing: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> UserKey:
        return cls(nacl.signing.SigningKey.generate())

    @property
    def agent_id(self) -> str:
        return self.signing.verify_key.encode().hex()

    @property
    def secret_hex(self) -> str:
        return self.signing.encode().hex()


def verify_signature(public_hex: str, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(bytes.fromhex(public_hex)).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class TokenClaims:
    sub: str  # agent id for users, "operator" for the operator
    name: str
    role: str  # "user" | "operator"
    exp: int
    jti: str


class NodeKeys:
    """The node's key material, loaded from (or created in) `DATA/keys/`."""

    def __init__(self, signing: nacl.signing.SigningKey, overlay: PrivateKey, master: bytes) -> None:
        self.signing = signing
        self.overlay = overlay
        self.master = master

    @classmethod
    def load_or_create(cls, data_dir: Path) -> NodeKeys:
        keys = Path(data_dir) / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        signing = nacl.signing.SigningKey(_secret_file(keys / "node.ed25519"))
        overlay = PrivateKey(_secret_file(keys / "node.x25519"))
        master = _secret_file(keys / "master.key")
        return cls(signing, overlay, master)

    @property
    def node_id(self) -> str:
        return self.signing.verify_key.encode().hex()

    @property
    def address(self) -> ipaddress.IPv6Address:
        return overlay_address(bytes(self.overlay.public_key))

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message).signature

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte subkey of the master key for `purpose` (e.g. an agent's storage key)."""
        return nacl.hash.blake2b(
            purpose.encode(), key=self.master, digest_size=32, encoder=nacl.encoding.RawEncoder
        )

    def seal_claims(self, prefix: str, claims: dict[str, Any]) -> str:
        """`prefix.payload.signature`: JSON claims this node vouches for (tokens, login challenges)."""
        payload = b64u(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signed = f"{prefix}.{payload}"
        return f"{signed}.{b64u(self.sign(signed.encode()))}"

    def open_claims(self, prefix: str, blob: str, *, what: str, schema: dict[str, type]) -> dict[str, Any]:
        """The claims of a blob this node sealed, exactly the names and types of `schema`;
        Unauthorized (naming the claim) if malformed or signed by anyone else."""
        parts = blob.split(".")
        if len(parts) != 3 or parts[0] != prefix:
            raise Unauthorized(f"malformed {what}")
        signed = f"{parts[0]}.{parts[1]}"
        try:
            self.signing.verify_key.verify(signed.encode(), unb64u(parts[2]))
            claims = json.loads(unb64u(parts[1]))
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError, binascii.Error, RecursionError):
            raise Unauthorized(f"invalid {what}: not issued by this node") from None
        if not isinstance(claims, dict):
            raise Unauthorized(f"malformed {what}")
        unexpected = claims.keys() - schema.keys()
        if unexpected:
            raise Unauthorized(f"malformed {what}: unexpected claim {min(unexpected)[:40]!r}")
        for name, kind in schema.items():
            if not _is_a(claims.get(name), kind):
                raise Unauthorized(f"malformed {what}: claim {name!r} must be {_KINDS[kind]}")
        return claims

    def issue_token(self, *, sub: str, name: str, role: str, ttl: float) -> tuple[str, TokenClaims]:
        claims = TokenClaims(sub=sub, name=name, role=role, exp=int(time.time() + ttl), jti=secrets.token_hex(8))
        return self.seal_claims(TOKEN_PREFIX, asdict(claims)), claims

    def verify_token(self, token: str, *, now: float | None = None) -> TokenClaims:
        """Check signature and expiry. Revocation is the user registry's job."""
        claims = TokenClaims(**self.open_claims(TOKEN_PREFIX, token, what="token", schema=TOKEN_CLAIMS))
        if claims.role not in ROLES:
            raise Unauthorized(f"malformed token: claim 'role' must be one of {ROLES}")
        if claims.exp < (time.time() if now is None else now):
            raise Unauthorized("token expired")
        return claims


_KINDS = {str: "a string", int: "an integer"}


def _is_a(value: Any, kind: type) -> bool:
    """`value` is a `kind` (never a bool for int), and a string is valid Unicode (JSON allows lone surrogates)."""
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    return not isinstance(value, str) or unicode.is_valid(value)


def _secret_file(path: Path) -> bytes:
    """32 random bytes kept in a 0600 file, created atomically on first use."""
    if path.exists():
        data = path.read_bytes()
        if len(data) != 32:
            raise BadRequest(f"key file {path} is corrupt (expected 32 bytes)")
        return data
    data = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if another process created it first: keep theirs
    except FileExistsError:
        data = path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    return data
