"""The Spark engine runs the same SQL as DuckDB: identical compact tables and stores (real Spark, local mode)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import duckdb
import pytest

from datastore_service.build.compact_table import rank_draft_trees
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.build.spark.engine import SparkSettings, build_compact_table, require_spark
from datastore_service.build.token_table import tokenize_corpus
from datastore_service.errors import CrestError
from datastore_service.sizes import Budget
from datastore_service.store.reader import open_store

PARAMS = BuildParams(max_context=3, max_depth=6, top_c=16, min_probability=0.05, budget=Budget(rows=10**9))


@pytest.fixture(scope="module")
def spark():
    """One local Spark session for the module; builds reuse it instead of starting their own."""
    pytest.importorskip("pyspark")
    pytest.importorskip("sqlglot")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def duckdb_compact_table(tokens: Path, params: BuildParams, vocab_size: int) -> list[tuple]:
    with duckdb.connect() as connection:
        connection.execute("CREATE TABLE tokens AS SELECT * FROM read_parquet($path)", {"path": str(tokens)})
        rank_draft_trees(connection, params, vocab_size, progress=False)
        return connection.execute("SELECT * FROM compact_drafts ORDER BY priority").fetchall()


def test_spark_and_duckdb_compact_tables_are_identical(spark, code_corpus: Path, smollm2, tmp_path: Path):
    tokens = tokenize_corpus(corpus_spec(str(code_corpus), glob="*.py"), smollm2, progress=False).parquet
    want = duckdb_compact_table(tokens, PARAMS, smollm2.vocab_size)
    candidates = build_compact_table(spark, tokens, PARAMS, smollm2.vocab_size, tmp_path / "compact", progress=False)
    with duckdb.connect() as connection:
        got = connection.execute(
            "SELECT * FROM read_parquet($files) ORDER BY priority", {"files": str(tmp_path / "compact" / "*.parquet")}
        ).fetchall()
    assert candidates == len(want) > 10_000
    assert [row[0] for row in want] == list(range(1, len(want) + 1))
    for expected, actual in zip(want, got, strict=True):  # row by row, every column
        assert actual == expected


def test_spark_build_publishes_the_same_store_within_a_budget(spark, code_corpus: Path, tmp_path: Path):
    corpus = tmp_path / "json"
    shutil.copytree(code_corpus / "json", corpus)
    params = BuildParams(max_context=2, max_depth=4, top_c=8, budget=Budget(rows=1_000))
    stores = {}
    for engine, settings in (("duckdb", None), ("spark", SparkSettings(master="local[2]"))):
        summary = build_store(
            corpus_spec(str(corpus), glob="*.py"),
            "smollm2",
            tmp_path / f"{engine}.duckdb",
            params,
            progress=False,
            spark=settings,
        )
        assert 0 < summary.contexts_kept < summary.candidate_contexts
        with open_store(tmp_path / f"{engine}.duckdb") as connection:
            stores[engine] = connection.execute("SELECT * FROM drafts ORDER BY context").fetchall()
    assert stores["spark"] == stores["duckdb"]
    assert spark.getActiveSession() is not None  # the build reused the module's session and left it running


def test_spark_needs_pyspark(monkeypatch: pytest.MonkeyPatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pyspark" else real_find_spec(name))
    with pytest.raises(CrestError, match=r"needs pyspark.*: pip install 'crest\[spark\]'"):
        require_spark()


def test_spark_needs_java(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CrestError, match="needs Java 17"):
        require_spark()
