"""Hero's overlay wire: packets inside an encrypted link frame, and the Babel-shaped control TLVs.

Layouts follow Mycelium's (`packet.rs`, `babel.rs`) where they can, with
Hero's changes: version 2 in the outer header (Mycelium's is 1); a control
packet carries many TLVs; IHU echoes the Hello seqno it answers (the RTT
sample); an Update carries the origin's signature; an agent record TLV.
Every decoder checks every length and raises `WireError`, never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 2
TYPE_DATA = 0
TYPE_CONTROL = 1
BABEL_MAGIC = 42
BABEL_VERSION = 4  # Mycelium's control packets are version 3
MAX_PAYLOAD = 65535
DATA_HEADER = 36  # u32 (reserved | length | hop limit) + src + dst
METRIC_INFINITE = 0xFFFF
AE_IPV6 = 2

T_HELLO = 4
T_IHU = 5
T_UPDATE = 8
T_ROUTE_REQUEST = 9
T_SEQNO_REQUEST = 10
T_AGENT_RECORD = 64
T_AGENT_QUERY = 65

_U32 = struct.Struct(">I")
_HDR = struct.Struct(">BBBB")
_BABEL = struct.Struct(">BBH")
_HELLO = struct.Struct(">HHH")
_IHU = struct.Struct(">BBHHH")
_UPDATE = struct.Struct(">BBBBHHH")
_SEQREQ = struct.Struct(">BBHBB")


class WireError(ValueError):
    """A frame, packet or TLV that does not decode; the link drops it and counts it."""


@dataclass(frozen=True, slots=True)
class DataPacket:
    """A data packet. Its payload is `payload` then `sealed`: `sealed` is already sealed end to end, so
    links authenticate it but do not encrypt it again; `payload` (session header, handshakes) they encrypt."""

    src: bytes  # 16-byte IPv6
    dst: bytes
    hop_limit: int
    payload: bytes
    sealed: bytes = b""


@dataclass(frozen=True, slots=True)
class Hello:
    seqno: int
    interval_cs: int


@dataclass(frozen=True, slots=True)
class Ihu:
    rx_cost: int
    interval_cs: int
    seqno: int  # the Hello this answers


@dataclass(frozen=True, slots=True)
class Update:
    plen: int
    interval_cs: int
    seqno: int
    metric: int
    prefix: bytes  # 16 bytes, bits past plen zero
    router_id: bytes  # 40 bytes
    signature: bytes  # 64 bytes from the origin, or b"" on a retraction

    @property
    def retraction(self) -> bool:
        return self.metric == METRIC_INFINITE


@dataclass(frozen=True, slots=True)
class RouteRequest:
    generation: int
    plen: int
    prefix: bytes


@dataclass(frozen=True, slots=True)
class SeqnoRequest:
    plen: int
    seqno: int
    hop_count: int
    router_id: bytes
    prefix: bytes


@dataclass(frozen=True, slots=True)
class AgentRecordTlv:
    raw: bytes  # decoded and verified by records.py


@dataclass(frozen=True, slots=True)
class AgentQuery:
    """Who hosts this agent? Flooded (deduplicated by nonce, at most `hops` far); the host publishes its record."""

    agent: bytes  # 32 bytes
    nonce: bytes  # 8 bytes
    hops: int


Tlv = Hello | Ihu | Update | RouteRequest | SeqnoRequest | AgentRecordTlv | AgentQuery


def encode_data(packet: DataPacket) -> bytes:
    """The packet up to its sealed part (which travels beside it: `Link.send(head, sealed)`)."""
    n = len(packet.payload) + len(packet.sealed)
    if n > MAX_PAYLOAD:
        raise WireError(f"data payload of {n} bytes is over {MAX_PAYLOAD}")
    if len(packet.src) != 16 or len(packet.dst) != 16:
        raise WireError("addresses are 16 bytes")
    return b"".join(
        (_HDR.pack(VERSION, TYPE_DATA, 0, 0), _U32.pack((n << 8) | packet.hop_limit), packet.src, packet.dst,
         packet.payload)
    )


def decode_packet(buf: bytes, sealed: bytes = b"") -> DataPacket | list[Tlv]:
    """One packet (`sealed`: the part a link carried authenticated but not encrypted): data, or control TLVs."""
    if len(buf) < 4:
        raise WireError("packet shorter than its 4-byte header")
    version, kind, _, _ = _HDR.unpack_from(buf)
    if version != VERSION:
        raise WireError(f"unknown packet version {version}")
    if kind == TYPE_DATA:
        return _decode_data(buf, sealed)
    if sealed:
        raise WireError("only data packets carry a sealed part")
    if kind == TYPE_CONTROL:
        return decode_control(buf[4:])
    raise WireError(f"unknown packet type {kind}")


def _decode_data(buf: bytes, sealed: bytes) -> DataPacket:
    if len(buf) < 4 + DATA_HEADER:
        raise WireError("data packet shorter than its header")
    (word,) = _U32.unpack_from(buf, 4)
    n = (word >> 8) & 0xFFFF
    if word >> 24:
        raise WireError("reserved bits set in data header")
    carried = len(buf) - 4 - DATA_HEADER + len(sealed)
    if carried != n:
        raise WireError(f"data packet length field says {n}, packet carries {carried}")
    return DataPacket(buf[8:24], buf[24:40], word & 0xFF, buf[40:], sealed)


def encode_control(tlvs: list[Tlv]) -> bytes:
    body = b"".join(_encode_tlv(t) for t in tlvs)
    if len(body) + 2 > 0xFFFF:
        raise WireError("control packet over 65,533 bytes of TLVs")
    return _HDR.pack(VERSION, TYPE_CONTROL, 0, 0) + _BABEL.pack(BABEL_MAGIC, BABEL_VERSION, len(body) + 2) + body


def control_size(tlv: Tlv) -> int:
    return len(_encode_tlv(tlv))


def decode_control(buf: bytes | memoryview) -> list[Tlv]:
    if len(buf) < 4:
        raise WireError("control packet shorter than its Babel header")
    magic, version, body_length = _BABEL.unpack_from(buf)
    if magic != BABEL_MAGIC or version != BABEL_VERSION:
        raise WireError(f"bad control magic/version {magic}/{version}")
    if body_length != len(buf) - 2:
        raise WireError("control body length does not match the packet")
    out: list[Tlv] = []
    pos = 4
    while pos < len(buf):
        if pos + 2 > len(buf):
            raise WireError("truncated TLV header")
        kind, length = buf[pos], buf[pos + 1]
        body = bytes(buf[pos + 2 : pos + 2 + length])
        if len(body) != length:
            raise WireError("truncated TLV body")
        out.append(_decode_tlv(kind, body))
        pos += 2 + length
    return out


def _prefix_bytes(plen: int) -> int:
    return (plen + 7) // 8


def _check_prefix(plen: int, prefix: bytes) -> bytes:
    if not 0 <= plen <= 128:
        raise WireError(f"prefix length {plen} out of range")
    full = prefix.ljust(16, b"\0")
    if plen < 128:
        value = int.from_bytes(full, "big")
        if value & ((1 << (128 - plen)) - 1):
            raise WireError("prefix has bits set past its length")
    return full


def _encode_tlv(t: Tlv) -> bytes:
    if isinstance(t, Hello):
        body = _HELLO.pack(0x8000, t.seqno, t.interval_cs)
        kind = T_HELLO
    elif isinstance(t, Ihu):
        body = _IHU.pack(0, 0, t.rx_cost, t.interval_cs, t.seqno)
        kind = T_IHU
    elif isinstance(t, Update):
        n = _prefix_bytes(t.plen)
        body = (
            _UPDATE.pack(AE_IPV6, 0, t.plen, 0, t.interval_cs, t.seqno, t.metric)
            + t.prefix[:n]
            + t.router_id
            + t.signature
        )
        kind = T_UPDATE
    elif isinstance(t, RouteRequest):
        body = bytes((t.generation, AE_IPV6, t.plen)) + t.prefix[: _prefix_bytes(t.plen)]
        kind = T_ROUTE_REQUEST
    elif isinstance(t, SeqnoRequest):
        body = _SEQREQ.pack(AE_IPV6, t.plen, t.seqno, t.hop_count, 0) + t.router_id + t.prefix[: _prefix_bytes(t.plen)]
        kind = T_SEQNO_REQUEST
    elif isinstance(t, AgentQuery):
        body = t.agent + t.nonce + bytes((t.hops,))
        kind = T_AGENT_QUERY
    else:
        body = t.raw
        kind = T_AGENT_RECORD
    if len(body) > 255:
        raise WireError("TLV body over 255 bytes")
    return bytes((kind, len(body))) + body


def _decode_tlv(kind: int, body: bytes) -> Tlv:
    if kind == T_HELLO:
        if len(body) != _HELLO.size:
            raise WireError("Hello TLV must be 6 bytes")
        _, seqno, interval = _HELLO.unpack(body)
        return Hello(seqno, interval)
    if kind == T_IHU:
        if len(body) != _IHU.size:
            raise WireError("IHU TLV must be 8 bytes")
        _, _, rx_cost, interval, seqno = _IHU.unpack(body)
        return Ihu(rx_cost, interval, seqno)
    if kind == T_UPDATE:
        if len(body) < _UPDATE.size:
            raise WireError("Update TLV too short")
        ae, _, plen, _, interval, seqno, metric = _UPDATE.unpack_from(body)
        if ae != AE_IPV6:
            raise WireError(f"Update address encoding {ae} is not IPv6")
        n = _prefix_bytes(plen) if plen <= 128 else 0
        rest = body[_UPDATE.size + n :]
        if len(rest) not in (40, 104):
            raise WireError("Update TLV has a bad length")
        prefix = _check_prefix(plen, body[_UPDATE.size : _UPDATE.size + n])
        return Update(plen, interval, seqno, metric, prefix, rest[:40], rest[40:])
    if kind == T_ROUTE_REQUEST:
        if len(body) < 3 or body[1] != AE_IPV6:
            raise WireError("bad Route Request TLV")
        plen = body[2]
        if len(body) != 3 + _prefix_bytes(plen):
            raise WireError("Route Request TLV has a bad length")
        return RouteRequest(body[0], plen, _check_prefix(plen, body[3:]))
    if kind == T_SEQNO_REQUEST:
        if len(body) < _SEQREQ.size + 40:
            raise WireError("Seqno Request TLV too short")
        ae, plen, seqno, hop_count, _ = _SEQREQ.unpack_from(body)
        if ae != AE_IPV6 or len(body) != _SEQREQ.size + 40 + _prefix_bytes(plen):
            raise WireError("bad Seqno Request TLV")
        router_id = body[_SEQREQ.size : _SEQREQ.size + 40]
        return SeqnoRequest(plen, seqno, hop_count, router_id, _check_prefix(plen, body[_SEQREQ.size + 40 :]))
    if kind == T_AGENT_RECORD:
        return AgentRecordTlv(body)
    if kind == T_AGENT_QUERY:
        if len(body) != 41:
            raise WireError("Agent Query TLV must be 41 bytes")
        return AgentQuery(body[:32], body[32:40], body[40])
    raise WireError(f"unknown TLV type {kind}")


def update_signed_bytes(plen: int, prefix: bytes, router_id: bytes, seqno: int) -> bytes:
    """What the origin signs: the subnet ↔ router binding at one seqno (the metric changes per hop)."""
    return b"hero-route-v1\0" + bytes((plen,)) + prefix + router_id + seqno.to_bytes(2, "big")
