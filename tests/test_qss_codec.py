"""QSS building blocks: the segment pipeline, the Reed–Solomon code, placement and signed manifests."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero.errors import BadRequest, IntegrityError
from hero.identity import NodeKeys
from hero.store import crypto, erasure, manifest, pipeline
from hero.store.placement import Slot, place, replica_targets

KEY = bytes(range(32))
OID = "cd" * 32
CODEC = erasure.codec(16, 4, erasure.default_type())


def seal(data: bytes, *, key: bytes = KEY, version: int = 1, index: int = 0, count: int = 1, level: int = 3):
    return pipeline.seal_segment(data, key=key, oid=OID, version=version, index=index, count=count, codec=CODEC,
                                 level=level)


def unseal(sealed, fragments: dict[int, bytes], *, key: bytes = KEY, version: int = 1, index: int = 0,
           count: int = 1) -> bytes:
    return pipeline.open_segment(fragments, key=key, oid=OID, version=version, index=index, count=count, codec=CODEC,
                                 nonce=sealed.nonce, compressed=sealed.compressed, plain=sealed.plain,
                                 sealed=sealed.sealed)


def sample(size: int, seed: int, compressible: bool) -> bytes:
    rnd = random.Random(seed)
    if not compressible:
        return rnd.randbytes(size)
    words = [b"agent", b"state", b"hello", b"timer", b'{"role":"user"}', b"\n", b"42"]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words) + b" "
    return bytes(out[:size])


@settings(max_examples=40, deadline=None)
@given(
    size=st.one_of(st.integers(0, 4096), st.integers(4096, 256 << 10), st.integers(256 << 10, 5 << 20)),
    seed=st.integers(0, 2**32),
    compressible=st.booleans(),
    lost=st.lists(st.integers(0, 19), max_size=4, unique=True),
)
def test_segment_round_trip_survives_any_four_losses(size: int, seed: int, compressible: bool, lost: list[int]):
    data = sample(size, seed, compressible)
    sealed = seal(data)
    assert len(sealed.fragments) == 20
    assert sealed.hashes == [pipeline.fragment_hash(f) for f in sealed.fragments]
    kept = {i: f for i, f in enumerate(sealed.fragments) if i not in lost}
    assert unseal(sealed, kept) == data
    if compressible and size > 1024:
        assert sealed.compressed and sealed.sealed < size


def test_every_one_of_the_4845_sets_of_four_lost_fragments_decodes():
    data = b"tiny agent state: " + bytes(range(200))
    sealed = seal(data)
    patterns = list(itertools.combinations(range(20), 4))
    assert len(patterns) == 4845
    for lost in patterns:
        kept = {i: f for i, f in enumerate(sealed.fragments) if i not in lost}
        assert unseal(sealed, kept) == data, lost


def test_no_two_fragments_are_alike_even_for_equal_tiny_objects():
    hashes = [h for _ in range(20) for h in seal(b"x").hashes]
    assert len(set(hashes)) == len(hashes)


def test_five_lost_fragments_is_a_clear_error():
    sealed = seal(b"x" * 1000)
    with pytest.raises(IntegrityError, match="need 16 fragments"):
        unseal(sealed, {i: f for i, f in enumerate(sealed.fragments) if i >= 5})


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=20_000), lost=st.lists(st.integers(0, 19), min_size=1, max_size=4, unique=True))
def test_reconstruct_rebuilds_the_exact_lost_fragments_from_ciphertext(data: bytes, lost: list[int]):
    sealed = seal(data)
    kept = {i: f for i, f in enumerate(sealed.fragments) if i not in lost}
    rebuilt = CODEC.reconstruct(kept, lost)
    assert {i: pipeline.fragment_hash(f) for i, f in rebuilt.items()} == {i: sealed.hashes[i] for i in lost}


def test_wrong_key_is_an_error_not_garbage():
    sealed = seal(b"secret agent state" * 50)
    with pytest.raises(IntegrityError, match="authentication failed"):
        unseal(sealed, dict(enumerate(sealed.fragments)), key=os.urandom(32))


@pytest.mark.parametrize("field", ["version", "index", "count"])
def test_fragments_cannot_be_replayed_as_another_version_or_segment(field: str):
    sealed = seal(b"version one" * 100)
    context = {"version": 1, "index": 0, "count": 1}
    context[field] += 1
    with pytest.raises(IntegrityError, match="authentication failed"):
        unseal(sealed, dict(enumerate(sealed.fragments)), **context)


def test_fragments_of_two_objects_cannot_be_mixed():
    a, b = seal(os.urandom(5000)), seal(os.urandom(5000))
    mixed = {i: (a if i < 8 else b).fragments[i] for i in range(16)}
    with pytest.raises(IntegrityError):
        unseal(a, mixed)


def test_bad_erasure_parameters_are_refused():
    with pytest.raises(BadRequest):
        erasure.Codec(0, 4, erasure.default_type())
    with pytest.raises(BadRequest):
        erasure.Codec(30, 4, erasure.default_type())
    with pytest.raises(BadRequest, match="not available"):
        erasure.Codec(4, 2, "no_such_code")


def test_data_keys_are_per_agent_and_object_ids_hide_the_key(tmp_path):
    ring = crypto.KeyRing(NodeKeys.load_or_create(tmp_path))
    a, b = "agent/" + "1" * 64, "agent/" + "2" * 64
    assert ring.data_key(a + "/state") == ring.data_key(a + "/timers") != ring.data_key(b + "/state")
    assert len(ring.data_key("node/leases")) == 32
    oid = ring.object_id(a + "/state")
    assert len(oid) == 64 and "1" * 16 not in oid
    other = crypto.KeyRing(NodeKeys.load_or_create(tmp_path / "other"))
    assert other.object_id(a + "/state") != oid and other.data_key(a) != ring.data_key(a)


@settings(max_examples=60, deadline=None)
@given(
    per_location=st.lists(st.integers(1, 8), min_size=1, max_size=8),
    seed=st.text(min_size=1, max_size=8),
)
def test_placement_spreads_over_locations_then_backends(per_location: list[int], seed: str):
    slots = [Slot(f"b{loc}-{i}", f"loc{loc}") for loc, count in enumerate(per_location) for i in range(count)]
    chosen = place(slots, 20, seed)
    assert len(chosen) == 20
    per_backend = Counter(chosen)
    assert max(per_backend.values()) - min(per_backend.get(s.name, 0) for s in slots) <= 1
    location = {s.name: s.location for s in slots}
    per_loc = Counter(location[n] for n in chosen)
    if len(slots) >= 20:
        assert max(per_backend.values()) == 1
        # No location could have taken fewer: the fullest holds no more than its balanced share or its size.
        fair = -(-20 // len(per_location))
        for loc, count in enumerate(per_location):
            assert per_loc.get(f"loc{loc}", 0) <= max(fair, 1) or per_loc[f"loc{loc}"] <= count
    if len(per_location) >= 5 and min(per_location) >= 4:
        assert max(per_loc.values()) <= 4


def test_placement_loses_at_most_m_fragments_per_location_with_five_sites():
    slots = [Slot(f"s{loc}-{i}", f"site{loc}") for loc in range(5) for i in range(4)]
    for n in range(50):
        chosen = place(slots, 20, f"object-{n}")
        assert len(set(chosen)) == 20
        assert set(Counter(s.split("-")[0] for s in chosen).values()) == {4}


def test_replica_targets_replace_unusable_backends():
    slots = [Slot(f"b{i}", "here") for i in range(20)]
    everyone = {s.name for s in slots}
    preferred = replica_targets(slots, everyone, "oid", 5)
    assert len(set(preferred)) == 5
    without = replica_targets(slots, everyone - {preferred[0]}, "oid", 5)
    assert preferred[0] not in without and set(preferred[1:]) <= set(without) and len(without) == 5


def _manifest(keys: NodeKeys, version: int = 1) -> manifest.Manifest:
    seg = manifest.SegmentRecord(10, True, b"n" * 24, 42, tuple("ab" * 32 for _ in range(20)),
                                 tuple(f"b{i}" for i in range(20)))
    return manifest.Manifest(OID, version, 3, 1.0, None, keys.node_id, 10, 16, 4, "isa_l_rs_cauchy", 3, b"k", b"n",
                             (seg,))


def test_manifest_signature_detects_tampering_and_unknown_signers(tmp_path):
    keys = NodeKeys.load_or_create(tmp_path)
    blob = manifest.sign_manifest(_manifest(keys), keys)
    assert manifest.open_manifest(blob, {keys.node_id}) == _manifest(keys)
    tampered = blob.replace(b'"epoch":3', b'"epoch":9')
    with pytest.raises(IntegrityError, match="signature"):
        manifest.open_manifest(tampered, {keys.node_id})
    with pytest.raises(IntegrityError, match="untrusted"):
        manifest.open_manifest(blob, {"00" * 32})
    with pytest.raises(IntegrityError, match="truncated"):
        manifest.open_manifest(blob[:-10], {keys.node_id})
    with pytest.raises(IntegrityError, match="malformed"):
        manifest.open_manifest(b"garbage" * 20, {keys.node_id})


def _signed(body: dict, keys: NodeKeys) -> bytes:
    import json
    import struct

    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    head = manifest.MANIFEST_MAGIC + struct.pack(">I", len(payload)) + payload
    return head + keys.sign(head)


def test_a_manifest_keeps_fragment_hashes_as_raw_bytes_and_format_1_manifests_still_open(tmp_path):
    keys = NodeKeys.load_or_create(tmp_path)
    rnd = random.Random(7)
    seg = manifest.SegmentRecord(40_000, True, os.urandom(24), 40_016,
                                 tuple(rnd.randbytes(32).hex() for _ in range(20)),
                                 tuple(f"local-{i:02d}" for i in range(20)))
    record = manifest.Manifest(OID, 1, 1, 1.7e9, None, keys.node_id, 40_000, 16, 4, "isa_l_rs_cauchy", 3,
                               os.urandom(33), os.urandom(24), (seg,))
    blob = manifest.sign_manifest(record, keys)
    assert manifest.open_manifest(blob, {keys.node_id}) == record
    # As written before (format 1: hex, one [hash, place] pair a fragment), signed then: opens as the same record.
    old = {**record.to_json(), "format": 1}
    old["segments"] = [{**{k: v for k, v in s.items() if k not in ("hashes", "places")},
                        "frags": [[h, p] for h, p in zip(seg.hashes, seg.places, strict=True)]}
                       for s in old["segments"]]
    assert manifest.open_manifest(_signed(old, keys), {keys.node_id}) == record
    # Stored on 5 replicas for every object version: with the hashes raw it is a quarter smaller than in hex.
    assert len(blob) < 1_800 and len(blob) < 0.8 * len(_signed(old, keys))
    # Hashes cut short, not base64, or places that do not match them: malformed, not a crash.
    for broken in ({"hashes": old["segments"][0]["frags"][0][0]}, {"hashes": "%%%"},
                   {"places": ["local-00"]}):
        body = record.to_json()
        body["segments"] = [{**body["segments"][0], **broken}]
        with pytest.raises(IntegrityError, match="malformed"):
            manifest.open_manifest(_signed(body, keys), {keys.node_id})


@settings(max_examples=50, deadline=None)
@given(
    segments=st.lists(
        st.tuples(st.lists(st.binary(min_size=32, max_size=32), min_size=20, max_size=20),
                  st.lists(st.text(max_size=12), min_size=20, max_size=20)),
        min_size=1, max_size=4),
)
def test_a_signed_manifest_opens_as_the_record_it_was_for_any_hashes_and_places(tmp_path_factory, segments):
    keys = NodeKeys.load_or_create(tmp_path_factory.getbasetemp() / "manifest-keys")
    records = tuple(manifest.SegmentRecord(1000 + i, bool(i % 2), bytes(24), 1016 + i, tuple(h.hex() for h in hashes),
                                           tuple(places)) for i, (hashes, places) in enumerate(segments))
    record = manifest.Manifest(OID, 2, 1, 1.7e9, "ab" * 32, keys.node_id, 4000, 16, 4, "isa_l_rs_cauchy", 3,
                               bytes(33), bytes(24), records)
    assert manifest.open_manifest(manifest.sign_manifest(record, keys), {keys.node_id}) == record


def test_placement_patches_have_a_magic_of_their_own_and_patches_signed_before_still_open(tmp_path):
    from hero.store import packformat

    keys = NodeKeys.load_or_create(tmp_path)
    patch = manifest.Patch(OID, 1, "ef" * 32, 1.7e9, keys.node_id, ((0, 3, "ab" * 32, "local-07"),))
    blob = manifest.sign_patch(patch, keys)
    magics = {manifest.MANIFEST_MAGIC, packformat.MAGIC, packformat.DEAD, packformat.INDEX_MAGIC}
    assert blob[:4] == manifest.PATCH_MAGIC and manifest.PATCH_MAGIC not in magics
    assert manifest.open_patch(blob, {keys.node_id}) == patch
    # As written before patches had their own magic: the pack record's (HQP1), signed with it.
    head = b"HQP1" + blob[4 : len(blob) - manifest.SIG_BYTES]
    earlier = head + keys.sign(head)
    assert manifest.open_patch(earlier, {keys.node_id}) == patch
    with pytest.raises(IntegrityError, match="malformed"):
        manifest.open_manifest(blob, {keys.node_id})
