"""Hot reload swaps the pair a CREST index is, the version's DuckDB file and its serving file,
together: a new version with its serving file, one published without (rebuilt), one with a damaged
serving file (rebuilt), and a damaged DuckDB file beside a sound serving file (refused: the old
pair keeps serving). A request holding the old index keeps its mapping even after its files go."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.serve.index_holder import IndexHolder
from datastore_service.store.publishing import VersionedStore
from datastore_service.store.reader import resolve_store
from tests.datastore_service.lookup.stores import BIG_IDS, assert_same_answers, publish_zipf_store

VOCAB = 262_144
QUERIES = [[a, b] for a in BIG_IDS for b in BIG_IDS] + [[t] for t in BIG_IDS]


def answers(index: DraftIndex):
    return index.lookup(QUERIES), index.lookup(QUERIES[:3])


def assert_serves(holder: IndexHolder, store: Path, source: Path) -> None:
    """The holder serves `store`'s current version, both files, with the answers of `source`."""
    version = resolve_store(store)
    assert holder.index.path == version and holder.index.serving_file == str(version.with_suffix(".serving"))
    for got, expected in zip(answers(holder.index), answers(DraftIndex.load(source))):
        assert_same_answers(got, expected)


def publish_copy(store: Path, source: Path, serving: bytes | None) -> None:
    """Publish `source`'s DuckDB file as a new version of `store`, with `serving` as its serving file."""
    versioned = VersionedStore(store)
    version = versioned.new_version()
    partial, companion = versioned.scratch(version, "partial"), versioned.scratch(version, "serving")
    shutil.copyfile(source, partial)
    companions = {}
    if serving is not None:
        companion.write_bytes(serving)
        companions[".serving"] = companion
    versioned.publish(partial, version, companions)


def test_hot_reload_swaps_both_files_together(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    store = publish_zipf_store(tmp_path / "store.duckdb", BIG_IDS, VOCAB, seed=1)
    others = [resolve_store(publish_zipf_store(tmp_path / f"other{s}.duckdb", BIG_IDS, VOCAB, seed=s)) for s in (2, 3)]
    holder = IndexHolder(store)
    first, first_answers = holder.index, answers(holder.index)

    publish_zipf_store(store, BIG_IDS, VOCAB, seed=4)  # a build: both files published
    assert holder.reload_if_published()
    assert_serves(holder, store, store)
    assert answers(holder.index)[0].scores.tolist() != first_answers[0].scores.tolist()  # other trees now
    for path in (first.path, Path(first.serving_file)):  # pruned, or removed by an operator
        path.unlink()
    for got, expected in zip(answers(first), first_answers):  # a request still holding the old index
        assert_same_answers(got, expected)

    publish_copy(store, others[0], serving=None)  # published before serving files existed
    assert holder.reload_if_published()
    assert_serves(holder, store, others[0])

    caplog.set_level(logging.WARNING)
    damaged = bytearray(others[1].with_suffix(".serving").read_bytes())
    damaged[-50] ^= 0xFF
    publish_copy(store, others[1], serving=bytes(damaged))
    assert holder.reload_if_published()
    assert_serves(holder, store, others[1])
    assert any("checksum mismatch" in r.getMessage() for r in caplog.records)

    serving_pair = (holder.index.path, holder.index.serving_file)
    sound_serving = others[1].with_suffix(".serving").read_bytes()
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"\x00not a database" * 1000)
    publish_copy(store, garbage, serving=sound_serving)
    assert not holder.reload_if_published()
    assert (holder.index.path, holder.index.serving_file) == serving_pair
    assert any(r.levelno == logging.ERROR and "refusing" in r.getMessage() for r in caplog.records)
