"""Pack files: what a directory backend's fragments live in. Any interleaving of puts, repairs, deletes,
crashes and other processes must leave every process reading exactly the live fragments."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hero.store.packs import HEADER, MAX_READERS, PackFiles
from hero.store.pipeline import fragment_hash


def frag(n: int, size: int) -> tuple[str, bytes]:
    """A fragment as a pack holds it: its bytes and their BLAKE3 hash (distinct for each n, any size)."""
    data = (n.to_bytes(4, "big") * (size // 4 + 2))[: size + 4]
    return fragment_hash(data), data


ops = st.lists(
    st.tuples(st.sampled_from(["put", "replace", "delete", "reopen", "other"]), st.integers(0, 30),
              st.integers(0, 3000)),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_any_sequence_of_puts_deletes_and_reopens_reads_like_a_dict(script):
    with tempfile.TemporaryDirectory() as root:
        packs = PackFiles(Path(root))
        other = PackFiles(Path(root))  # another process sharing the directory
        model: dict[str, bytes] = {}
        names: dict[int, str] = {}
        try:
            for op, n, size in script:
                digest, data = frag(n, size) if n not in names else (names[n], model.get(names[n], b""))
                if n not in names:
                    names[n] = digest
                if op == "put":
                    packs.append([(digest, data)])
                    model[digest] = data
                elif op == "replace" and digest in model:
                    other.append([(digest, model[digest])], replace=True)
                elif op == "delete":
                    assert packs.delete([digest]) == (1 if digest in model else 0)
                    model.pop(digest, None)
                elif op == "reopen":
                    packs.close()
                    packs = PackFiles(Path(root))
                elif op == "other" and digest in model:
                    assert other.delete([digest]) == 1
                    model.pop(digest)
                for reader in (packs, other):
                    assert reader.read(list(names.values())) == [model.get(d) for d in names.values()]
            fresh = PackFiles(Path(root))
            assert {d: s for d, s, _ in fresh.entries()} == {d: len(v) for d, v in model.items()}
            fresh.close()
        finally:
            packs.close()
            other.close()


def test_a_torn_record_is_ignored_and_a_lost_index_entry_is_found_again(tmp_path: Path):
    writer = PackFiles(tmp_path)
    a, b = frag(1, 1000), frag(2, 2000)
    writer.append([a])
    writer.append([b])
    writer.close()
    (pack,) = tmp_path.glob("*.pack")
    (index,) = tmp_path.glob("*.idx")
    index.write_bytes(index.read_bytes()[: -10])  # the crash cut b's index entry short
    with open(pack, "ab") as f:
        f.write(HEADER.pack(b"HQP1", 5000, bytes(32)) + b"half a record")  # and tore a third record
    reader = PackFiles(tmp_path)
    assert reader.read([a[0], b[0]]) == [a[1], b[1]]
    assert len(reader.entries()) == 2
    reader.close()


def test_a_mostly_dead_pack_of_a_gone_writer_is_compacted_and_other_readers_follow(tmp_path: Path):
    old = PackFiles(tmp_path)
    items = [frag(i, 4000) for i in range(10)]
    old.append(items)
    old.close()
    reader = PackFiles(tmp_path)
    assert reader.read([items[9][0]]) == [items[9][1]]
    gc = PackFiles(tmp_path)
    assert gc.delete([d for d, _ in items[:6]]) == 6
    packs = sorted(tmp_path.glob("*.pack"))
    assert len(packs) == 1 and packs[0].stat().st_size < 5 * 4100  # the old pack is gone, 4 live records moved
    assert reader.read([d for d, _ in items]) == [None] * 6 + [v for _, v in items[6:]]
    assert sorted(d for d, _, _ in PackFiles(tmp_path).entries()) == sorted(d for d, _ in items[6:])
    gc.close()
    reader.close()


def test_a_wiped_directory_gets_a_new_pack_instead_of_writing_into_a_deleted_file(tmp_path: Path):
    packs = PackFiles(tmp_path)
    packs.append([frag(1, 100)])
    for path in tmp_path.iterdir():
        os.unlink(path)
    b = frag(2, 100)
    packs.append([b])
    assert PackFiles(tmp_path).read([b[0]]) == [b[1]]
    packs.close()


def test_one_append_of_more_records_than_writev_takes(tmp_path: Path):
    packs = PackFiles(tmp_path)
    items = [frag(i, 50) for i in range(1500)]  # 3,000 buffers: more than IOV_MAX
    packs.append(items)
    assert PackFiles(tmp_path).read([d for d, _ in items]) == [v for _, v in items]
    packs.close()


def test_the_pack_of_a_live_writer_is_never_compacted_away(tmp_path: Path):
    writer = PackFiles(tmp_path)
    items = [frag(i, 4000) for i in range(10)]
    writer.append(items)
    gc = PackFiles(tmp_path)
    assert gc.delete([d for d, _ in items[:8]]) == 8  # mostly dead, but its writer still holds it
    later = frag(99, 100)
    writer.append([later])
    assert PackFiles(tmp_path).read([items[9][0], later[0]]) == [items[9][1], later[1]]
    gc.close()
    writer.close()


def test_small_packs_of_short_lived_processes_are_merged_and_readers_stay_bounded(tmp_path: Path):
    items = [frag(i, 300) for i in range(MAX_READERS + 10)]
    for item in items:  # one CLI call each: a pack each
        one = PackFiles(tmp_path)
        one.append([item])
        one.close()
    reader = PackFiles(tmp_path)
    assert reader.read([d for d, _ in items]) == [v for _, v in items]
    assert len(reader._readers) <= MAX_READERS
    gc = PackFiles(tmp_path)
    assert gc.delete([items[0][0]]) == 1
    assert len(list(tmp_path.glob("*.pack"))) == 1
    assert reader.read([d for d, _ in items]) == [None] + [v for _, v in items[1:]]
    gc.close()
    reader.close()
