"""Opening a store maps the serving file published beside its DuckDB file; a missing, damaged or
foreign serving file is rebuilt from the DuckDB file (one log line), one that can't be written is
served from memory, and a damaged DuckDB file is refused in one line. Never a wrong answer."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from datastore_service.errors import StoreError
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.store.reader import resolve_store
from datastore_service.store.serving_arrays import rebuild_serving_file
from datastore_service.store.serving_file import map_serving_file
from tests.datastore_service.lookup.stores import BIG_IDS, assert_same_answers

QUERIES = [[a, b] for a in BIG_IDS for b in BIG_IDS] + [[t] for t in BIG_IDS] + [[12_345]]


@pytest.fixture()
def store(big_id_store: Path, tmp_path: Path) -> Path:
    """A private copy of the published version: `store.duckdb` and its `store.serving`."""
    source = resolve_store(big_id_store)
    shutil.copyfile(source, tmp_path / "store.duckdb")
    shutil.copyfile(source.with_suffix(".serving"), tmp_path / "store.serving")
    return tmp_path / "store.duckdb"


@pytest.fixture(scope="module")
def reference(big_id_store: Path):
    index = DraftIndex.load(big_id_store)
    return {selection: index.lookup(QUERIES, selection=selection) for selection in ("scored", "longest")}


def assert_answers(index: DraftIndex, reference) -> None:
    for selection, expected in reference.items():
        assert_same_answers(index.lookup(QUERIES, selection=selection), expected)
        assert_same_answers(
            index.lookup(QUERIES[:1], selection=selection),
            index.lookup_vectorised(index.prepare(QUERIES[:1]), selection),
        )


def test_a_published_version_carries_its_serving_file(big_id_store: Path):
    version = resolve_store(big_id_store)
    index = DraftIndex.load(big_id_store)
    assert index.path == version and index.serving_file == str(version.with_suffix(".serving"))
    assert sorted(p.suffix for p in version.parent.iterdir()) == [".duckdb", ".serving"]


def test_a_missing_serving_file_is_built_beside_the_store(store: Path, reference, caplog):
    caplog.set_level(logging.INFO, logger="crest.lookup")
    store.with_suffix(".serving").unlink()
    index = DraftIndex.load(store)
    assert index.serving_file == str(store.with_suffix(".serving")) and store.with_suffix(".serving").is_file()
    assert [r.getMessage() for r in caplog.records] == [
        "built store.serving from store.duckdb (it had no serving file)"
    ]
    assert_answers(index, reference)


def _flip_a_node_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last section, the nodes' running counts
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped byte": (_flip_a_node_byte, "section node_cumulative checksum mismatch"),
    "cut short": (lambda p: p.write_bytes(p.read_bytes()[:5000]), "lies outside the file"),
    "not a serving file": (lambda p: p.write_bytes(b"\x00" * 64), "bad magic"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_serving_file_is_rebuilt_with_one_warning(store: Path, reference, caplog, kind: str):
    damage, reason = DAMAGE[kind]
    damage(store.with_suffix(".serving"))
    caplog.set_level(logging.WARNING, logger="crest.lookup")
    index = DraftIndex.load(store)
    [record] = caplog.records
    assert reason in record.getMessage() and "rebuilt it from store.duckdb" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert_answers(index, reference)
    map_serving_file(store.with_suffix(".serving"))  # sound on disk again


def test_another_versions_serving_file_is_replaced(store: Path, edge_id_store: Path, reference, caplog):
    shutil.copyfile(resolve_store(edge_id_store).with_suffix(".serving"), store.with_suffix(".serving"))
    caplog.set_level(logging.WARNING, logger="crest.lookup")
    index = DraftIndex.load(store)
    assert "was derived from another file than store.duckdb" in caplog.records[0].getMessage()
    assert_answers(index, reference)


def test_a_serving_file_that_cannot_be_written_is_served_from_memory(store: Path, reference, caplog):
    serving = store.with_suffix(".serving")
    serving.unlink()
    serving.mkdir()  # a folder in the way: neither readable as a file nor replaceable
    caplog.set_level(logging.WARNING, logger="crest.lookup")
    index = DraftIndex.load(store)
    assert index.serving_file == "store.serving (in memory)"
    assert any("serving from memory" in record.getMessage() for record in caplog.records)
    assert_answers(index, reference)


def test_a_damaged_duckdb_file_is_refused_in_one_line_even_beside_a_sound_serving_file(store: Path):
    store.write_bytes(b"\x00not a database" * 1000)
    with pytest.raises(StoreError, match="not a readable DuckDB file") as refused:
        DraftIndex.load(store)
    assert "\n" not in str(refused.value)


def test_replicas_building_a_missing_serving_file_keep_the_first_one(store: Path):
    """A replica that finds the file missing links its build in place only if none is there yet,
    so replicas starting together on an old store end up mapping one file (one inode)."""
    serving = store.with_suffix(".serving")
    first = serving.stat().st_ino  # as if a replica starting beside this one had just published it
    assert rebuild_serving_file(store, replace=False) == serving and serving.stat().st_ino == first
    rebuild_serving_file(store)  # damaged ones are replaced
    assert serving.stat().st_ino != first
    assert sorted(p.name for p in store.parent.iterdir()) == ["store.duckdb", "store.serving"]  # no scratch left
