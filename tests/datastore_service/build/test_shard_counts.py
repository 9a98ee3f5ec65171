"""Counts are additive: a store built from shards equals one built from their union, row by row."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore_service.build.compact_table import Stopwatch, rank_counted_trees, rank_draft_trees
from datastore_service.build.corpus import CorpusReport, corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.build.shard_counts import merge_shard_counts
from datastore_service.build.token_table import TOKEN_SCHEMA, TokenizedCorpus
from datastore_service.paths import cache_dir
from datastore_service.sizes import Budget
from datastore_service.store.reader import open_store, read_store_info

VOCAB = 6


def token_table(documents: list[list[int]]) -> pa.Table:
    lengths = [len(doc) for doc in documents]
    return pa.table(
        [
            np.repeat(np.arange(len(documents), dtype=np.int32), lengths),
            np.arange(sum(lengths), dtype=np.int64),
            np.array([t for doc in documents for t in doc], dtype=np.int32),
        ],
        schema=TOKEN_SCHEMA,
    )


def tokenized_shard(documents: list[list[int]], folder: Path) -> TokenizedCorpus:
    path = folder / f"shard-{uuid.uuid4().hex}.parquet"
    pq.write_table(token_table(documents), path)
    return TokenizedCorpus(path, sum(map(len, documents)), CorpusReport(), from_cache=False)


def compact_rows(connection: duckdb.DuckDBPyConnection) -> list[tuple]:
    return connection.execute("SELECT * FROM compact_drafts ORDER BY priority").fetchall()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    documents=st.lists(st.lists(st.integers(0, VOCAB - 1), max_size=30), min_size=2, max_size=8),
    cuts=st.lists(st.integers(1, 7), min_size=1, max_size=3, unique=True),
    min_count=st.integers(2, 3),
)
def test_merged_shard_counts_equal_one_count_over_the_union(tmp_path: Path, documents, cuts, min_count):
    params = BuildParams(max_context=2, max_depth=3, top_c=4, min_count=min_count, budget=Budget(rows=10**9))
    bounds = [0, *sorted(cut for cut in cuts if cut < len(documents)), len(documents)]
    shards = [tokenized_shard(documents[a:b], tmp_path) for a, b in zip(bounds, bounds[1:])]
    with duckdb.connect() as single, duckdb.connect() as merged:
        all_tokens = token_table(documents)  # noqa: F841 (DuckDB reads it by name)
        single.execute("CREATE TABLE tokens AS SELECT * FROM all_tokens")
        want = rank_draft_trees(single, params, VOCAB, progress=False)
        merge_shard_counts(merged, shards, params.levels, params.min_count, VOCAB, progress=False)
        assert (
            merged.execute("SELECT * FROM ngrams ORDER BY level, gid").fetchall()
            == single.execute("SELECT * FROM ngrams ORDER BY level, gid").fetchall()
        )
        got = rank_counted_trees(merged, params, Stopwatch(), progress=False)
        assert got == want
        assert compact_rows(merged) == compact_rows(single)


def test_a_count_rare_in_every_shard_survives_the_merge(tmp_path: Path):
    # `1 2` is seen once per shard: pruning each shard at min_count 2 would lose it
    shards = [tokenized_shard([[1, 2, 3]], tmp_path), tokenized_shard([[4, 1, 2]], tmp_path)]
    with duckdb.connect() as connection:
        merge_shard_counts(connection, shards, levels=3, min_count=2, vocab_size=VOCAB, progress=False)
        assert connection.execute("SELECT level, token, count FROM ngrams ORDER BY level, token").fetchall() == [
            (1, 1, 2),
            (1, 2, 2),
            (2, 2, 2),
        ]


def test_sharded_build_equals_single_build_and_adding_a_shard_counts_only_it(code_corpus: Path, tmp_path: Path):
    union = tmp_path / "union"
    shutil.copytree(code_corpus / "json", union / "json")
    shutil.copytree(code_corpus / "email", union / "email", ignore=shutil.ignore_patterns("mime"))
    shutil.copytree(code_corpus / "email" / "mime", union / "mime")
    json, email, mime = (corpus_spec(str(union / name), glob="*.py") for name in ("json", "email", "mime"))
    params = BuildParams(budget=Budget(rows=5_000))

    def drafts(store: Path) -> list[tuple]:
        with open_store(store) as connection:
            return connection.execute("SELECT * FROM drafts ORDER BY context").fetchall()

    single = build_store(
        corpus_spec(str(union), glob="*.py"), "smollm2", tmp_path / "single.duckdb", params, progress=False
    )
    build_store(json, "smollm2", tmp_path / "sharded.duckdb", params, progress=False, shards=(email,))
    counted = {path: path.stat().st_mtime_ns for path in cache_dir("counts").iterdir()}
    sharded = build_store(json, "smollm2", tmp_path / "sharded.duckdb", params, progress=False, shards=(email, mime))
    new_counts = [path for path in cache_dir("counts").iterdir() if path not in counted]
    assert len(new_counts) == 1, "only the added shard is counted"
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in counted.items())
    assert (sharded.tokens, sharded.documents, sharded.candidate_contexts) == (
        single.tokens,
        single.documents,
        single.candidate_contexts,
    )
    assert sharded.contexts_kept == single.contexts_kept == 5_000
    assert drafts(tmp_path / "sharded.duckdb") == drafts(tmp_path / "single.duckdb")
    assert read_store_info(tmp_path / "sharded.duckdb")["corpus_name"] == "json+email+mime"
