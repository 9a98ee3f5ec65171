"""The Spark engine runs the same SQL as DuckDB: identical compact tables and stores (real Spark, local
mode), listening on loopback only. test_spark_cluster.py runs it on a standalone cluster."""

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
from datastore_service.build.spark.engine import SparkSettings, build_compact_table, require_spark, spark_session
from datastore_service.build.token_table import tokenize_corpus
from datastore_service.errors import CrestError
from datastore_service.sizes import Budget
from datastore_service.store.reader import open_store
from tests.datastore_service.listening_sockets import ListeningSockets

PARAMS = BuildParams(max_context=3, max_depth=6, top_c=16, min_probability=0.05, budget=Budget(rows=10**9))


@pytest.fixture(scope="module")
def spark():
    """One local Spark session for the module, with the build's defaults (loopback, no UI); builds
    reuse it instead of starting their own."""
    pytest.importorskip("pyspark")
    pytest.importorskip("sqlglot")
    conf = (("spark.driver.memory", "1g"), ("spark.sql.shuffle.partitions", "2"))
    with spark_session(SparkSettings(master="local[2]", conf=conf)) as session:
        yield session


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
        with ListeningSockets() as sockets:
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
    # The driver, its block manager and py4j: all on loopback, though this host has another interface.
    assert {name for _, _, name, _ in sockets.seen} >= {"java"} and sockets.not_loopback() == []


def test_loopback_by_default_for_local_and_loopback_masters_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)
    for master in ("local[*]", "spark://127.0.0.1:7077", "spark://localhost:7077,127.0.0.2:7077"):
        conf = SparkSettings(master=master).spark_conf()
        assert conf["spark.driver.bindAddress"] == conf["spark.driver.host"] == "127.0.0.1"
    assert "spark.driver.bindAddress" not in SparkSettings(master="spark://spark-master:7077").spark_conf()
    chosen = SparkSettings(bind_address="10.1.2.3").spark_conf()
    assert chosen["spark.driver.bindAddress"] == "10.1.2.3"
    overridden = SparkSettings(conf=(("spark.driver.bindAddress", "0.0.0.0"),)).spark_conf()
    assert overridden["spark.driver.bindAddress"] == "0.0.0.0" and overridden["spark.driver.host"] == "127.0.0.1"
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.9.9.9")
    assert SparkSettings().spark_conf()["spark.driver.bindAddress"] == "10.9.9.9"


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
