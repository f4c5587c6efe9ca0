"""Overlay identity vectors, signatures, and every decoder under hypothesis fuzzing."""

from __future__ import annotations

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero.identity import UserKey
from hero.net.address import Identity, RouterId, load_or_create_key, verify
from hero.net.handshake import Handshake, HandshakeError
from hero.net.messages import MessageService
from hero.net.records import AgentDirectory, AgentRecord, HostAuthority, sign_grant
from hero.net.session import ReplayWindow, Sessions
from hero.net.wire import (
    METRIC_INFINITE,
    AgentQuery,
    DataPacket,
    Hello,
    Ihu,
    RouteRequest,
    SeqnoRequest,
    Update,
    WireError,
    decode_packet,
    encode_control,
    encode_data,
)
from hero.nursery import Nursery

VECTORS = [
    (bytes(32), "2fe57da347cd62431528daac5fbb290730fff684afc4cfc2ed90995f58cb3b74",
     "570:75b1:b695:5ed7:541e:e8d8:efbb:b9a0"),
    (bytes(range(32)), "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f",
     "430:9364:d8d8:84a9:dd60:de78:c767:d361"),
    (b"\xff" * 32, "847c0d2c375234f365e660955187a3735a0f7613d1609d3a6a4d8c53aeaa5a22",
     "569:215c:b0bf:ab7b:fe1b:f51d:b0c2:635a"),
]


@pytest.mark.parametrize(("secret", "public", "address"), VECTORS)
def test_mycelium_address_vectors(secret: bytes, public: str, address: str) -> None:
    identity = Identity(secret)
    assert identity.public.hex() == public
    assert str(identity.address) == address
    assert str(identity.subnet) == address.rsplit(":", 4)[0] + "::/64"


def test_shared_secret_vector() -> None:
    shared = Identity(bytes(range(32))).dh(Identity(b"\xff" * 32).public)
    assert shared.hex() == "7eca6fe754c53b27e67ab8148e0ffe6ed8cb7604e5741fed5da78fa0d22dd36d"


def test_key_file_is_raw_32_bytes_and_reused(tmp_path) -> None:
    path = tmp_path / "priv_key.bin"
    first = load_or_create_key(path)
    assert path.read_bytes() == first.secret and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path).public == first.public
    (tmp_path / "bad.bin").write_bytes(b"short")
    with pytest.raises(Exception, match="32-byte"):
        load_or_create_key(tmp_path / "bad.bin")


def test_xeddsa_signatures_verify_from_the_x25519_key_alone() -> None:
    for _ in range(20):
        identity = Identity.generate()
        signature = identity.sign(b"route")
        assert verify(identity.public, b"route", signature)
        assert not verify(identity.public, b"routf", signature)
        assert not verify(Identity.generate().public, b"route", signature)


def test_router_id_round_trip() -> None:
    rid = Identity.generate().router_id
    assert RouterId.decode(rid.encode()) == rid


update = st.builds(
    lambda plen_bytes, seqno, metric, rid, sig: Update(
        64, 3000, seqno, metric, plen_bytes + bytes(8), rid, b"" if metric == METRIC_INFINITE else sig
    ),
    st.binary(min_size=8, max_size=8), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
    st.binary(min_size=40, max_size=40), st.binary(min_size=64, max_size=64),
)
tlv = st.one_of(
    st.builds(Hello, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.builds(Ihu, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    update,
    st.builds(lambda g, p: RouteRequest(g, 64, p + bytes(8)), st.integers(0, 255), st.binary(min_size=8, max_size=8)),
    st.builds(lambda s, h, r, p: SeqnoRequest(64, s, h, r, p + bytes(8)), st.integers(0, 0xFFFF),
              st.integers(0, 255), st.binary(min_size=40, max_size=40), st.binary(min_size=8, max_size=8)),
    st.builds(AgentQuery, st.binary(min_size=32, max_size=32), st.binary(min_size=8, max_size=8),
              st.integers(0, 255)),
)


@given(st.lists(tlv, max_size=20))
def test_control_round_trip(tlvs) -> None:
    assert decode_packet(encode_control(tlvs)) == tlvs


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.integers(0, 255),
       st.binary(max_size=2000), st.binary(max_size=2000))
def test_data_round_trip(src, dst, hop, payload, sealed) -> None:
    packet = DataPacket(src, dst, hop, payload, sealed)
    assert decode_packet(encode_data(packet), sealed) == packet
    if sealed:  # the length field counts the sealed part: it cannot be dropped or swapped
        with pytest.raises(WireError):
            decode_packet(encode_data(packet))
        with pytest.raises(WireError):
            decode_packet(encode_data(packet), sealed + b"x")


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_garbage_packets_raise_only_wire_error(raw) -> None:
    for candidate in (raw, b"\x02\x01\0\0" + raw, b"\x02\x01\0\0\x2a\x04" + len(raw).to_bytes(2, "big") + raw,
                      b"\x02\x00\0\0" + raw):
        try:
            packet = decode_packet(candidate)
        except WireError:
            continue
        # What garbage decodes to is a packet the node could have sent: it encodes and decodes to itself.
        again = encode_data(packet) if isinstance(packet, DataPacket) else encode_control(packet)
        assert decode_packet(again) == packet


@given(st.lists(tlv, min_size=1, max_size=5), st.integers(0, 400))
def test_truncated_control_packets_are_rejected(tlvs, cut) -> None:
    raw = encode_control(tlvs)
    cut = min(cut, len(raw) - 1)
    with pytest.raises(WireError):
        decode_packet(raw[:cut])


def test_unknown_version_is_rejected() -> None:
    raw = bytearray(encode_control([Hello(1, 50)]))
    raw[0] = 1
    with pytest.raises(WireError, match="version"):
        decode_packet(bytes(raw))


@given(st.binary(max_size=3000))
@settings(max_examples=200)
def test_handshake_reader_rejects_garbage(raw) -> None:
    responder = Handshake("XXhfs", initiator=False, static_secret=Identity.generate().secret)
    try:
        responder.read(raw)
    except HandshakeError:
        return
    # a first message is plaintext e ‖ e1: only the right length parses, and then the next step must fail
    assert len(raw) >= 32 + 1184


def test_handshake_detects_tampering() -> None:
    a, b = Identity.generate(), Identity.generate()
    i = Handshake("XXhfs", initiator=True, static_secret=a.secret)
    r = Handshake("XXhfs", initiator=False, static_secret=b.secret)
    r.read(i.write())
    msg = bytearray(r.write())
    msg[-1] ^= 1
    with pytest.raises(HandshakeError):
        i.read(bytes(msg))


def test_replay_window() -> None:
    w = ReplayWindow(64)
    for n in (5, 3, 10, 4):
        assert w.fresh(n)
        w.mark(n)
    assert not w.fresh(5) and not w.fresh(10) and w.fresh(9)
    w.mark(200)
    assert not w.fresh(100)  # fell out of the window: too old


@given(st.binary(max_size=300), st.binary(max_size=100))
def test_session_receive_never_raises(raw, sealed) -> None:
    ident = Identity(bytes(range(32)))
    sessions = Sessions(ident, lambda *a: None, lambda *a: None)
    sessions.receive(bytes(16), ident.address.packed, raw, sealed)
    assert sessions.stats.bad_packets + sessions.stats.handshakes_rejected + sessions.stats.unknown_session > 0


@given(st.binary(max_size=300))
async def test_message_frames_never_raise(raw) -> None:
    nursery = Nursery("t")
    service = MessageService(lambda *a: None, nursery, local_pk=bytes(32), local_ip="400::1", ip_of=str)
    service.on_frame(bytes(32), raw)
    service.on_frame(bytes(32), b"12345678" + b"\x80\x00\0\0" + (2**40).to_bytes(8, "big") + b"\0")
    assert service.stats.too_large == 1  # INIT's length is capped, never allocated
    await nursery.aclose()


def test_agent_records() -> None:
    owner = UserKey.generate()
    agent = bytes.fromhex(owner.agent_id)
    authority = HostAuthority(nacl.signing.SigningKey.generate())
    grant = sign_grant(owner.signing, authority.public)
    node = Identity.generate()
    record = AgentRecord.issue(node.public, authority, agent, grant, 60)
    directory = AgentDirectory()
    assert directory.learn(record.encode()) == record
    assert directory.learn(record.encode()) is None  # not new: not flooded again
    assert directory.resolve(agent) == node.public
    forged = bytearray(record.encode())
    forged[40] ^= 1
    assert directory.learn(bytes(forged)) is None and directory.rejected == 1
    newer = AgentRecord.issue(Identity.generate().public, authority, agent, grant, 60, now=record.issued_ms / 1000 + 5)
    assert directory.learn(newer.encode()) == newer  # the agent moved
    expired = AgentRecord.issue(node.public, authority, agent, grant, 60, now=1.0)
    assert AgentDirectory().learn(expired.encode()) is None
