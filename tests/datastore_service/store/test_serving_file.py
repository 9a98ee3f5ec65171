"""The serving file: what is written is mapped back in place, any damage to what it covers is
refused with one line, and the two spellings of the context hash agree."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import right_aligned
from datastore_service.store.context_hash import HASH_SEEDS, suffix_hashes, suffix_hashes_of
from datastore_service.store.publishing import KEEP_OLD_VERSIONS, VersionedStore
from datastore_service.store.serving_file import (
    ALIGNMENT,
    DamagedServingFile,
    map_serving_file,
    write_serving_file,
)

ARRAYS = {
    "hashes": np.array([3, 9, 2**64 - 1], np.uint64),
    "matrix": np.arange(12, dtype=np.uint16).reshape(4, 3),
    "empty": np.empty(0, np.int8),
    "parents": np.array([-1, 0, 1, -1, 3], np.int8),
    "running": np.array([5, 9, 10], np.uint32),
}


@pytest.fixture()
def written(tmp_path: Path) -> Path:
    path = tmp_path / "x.serving"
    write_serving_file(path, {"store_version": "v1", "width": 3}, ARRAYS)
    return path


def sections(path: Path) -> list[dict]:
    length = struct.unpack_from("<I", path.read_bytes(), 12)[0]
    return json.loads(path.read_bytes()[20 : 20 + length])["sections"]


def test_arrays_come_back_in_place_read_only_and_aligned(written: Path):
    serving = map_serving_file(written)
    assert serving.metadata == {"store_version": "v1", "width": 3}
    assert list(serving.arrays) == list(ARRAYS)
    for name, array in ARRAYS.items():
        mapped = serving.arrays[name]
        assert mapped.dtype == array.dtype and np.array_equal(mapped, array)
        assert not mapped.flags.writeable and not mapped.flags.owndata  # a view of the mapping
    assert all(section["offset"] % ALIGNMENT == 0 for section in sections(written))


def damage_points(path: Path) -> dict[str, int]:
    """One byte in each part the format covers: its prefix, its header, each non-empty section."""
    points = {"magic": 0, "version": 9, "header length": 13, "header checksum": 17, "header": 30}
    for section in sections(path):
        if section["nbytes"]:
            points[section["name"]] = section["offset"] + section["nbytes"] // 2
    return points


def test_a_flipped_byte_anywhere_it_covers_is_refused(written: Path):
    original = written.read_bytes()
    for where, position in damage_points(written).items():
        damaged = bytearray(original)
        damaged[position] ^= 0x5A
        written.write_bytes(bytes(damaged))
        with pytest.raises(DamagedServingFile, match="is damaged") as refused:
            map_serving_file(written)
        assert "\n" not in str(refused.value), where


@pytest.mark.parametrize("keep", [0, 5, 19, 100, -1])
def test_a_cut_file_is_refused(written: Path, keep: int):
    written.write_bytes(written.read_bytes()[:keep])
    with pytest.raises(DamagedServingFile, match="is damaged"):
        map_serving_file(written)


@given(
    rows=st.lists(st.lists(st.integers(0, 2**20), min_size=1, max_size=4), min_size=1, max_size=6),
    seed=st.sampled_from(HASH_SEEDS),
)
@settings(max_examples=100, deadline=None)
def test_the_scalar_hash_is_the_vectorised_hash(rows: list[list[int]], seed: int):
    lengths = np.array([len(row) for row in rows])
    tails = right_aligned(np.array([t for row in rows for t in row], np.int64), lengths, 4)
    vectorised = suffix_hashes(tails, seed)
    for row, hashes in zip(rows, vectorised):
        assert suffix_hashes_of(row, seed) == hashes[: len(row)].tolist()


def test_old_versions_are_pruned_with_their_serving_files(tmp_path: Path):
    store = VersionedStore(tmp_path / "s.duckdb")
    published = []
    for _ in range(KEEP_OLD_VERSIONS + 2):
        version = store.new_version()
        partial, serving = store.scratch(version, "partial"), store.scratch(version, "serving")
        partial.write_bytes(b"store")
        serving.write_bytes(b"serving")
        published.append(store.publish(partial, version, companions={".serving": serving}))
    kept = published[-(KEEP_OLD_VERSIONS + 1) :]
    expected = sorted([*kept, *(path.with_suffix(".serving") for path in kept)])
    assert sorted(store.versions.iterdir()) == expected
    assert store.path.resolve() == published[-1]
