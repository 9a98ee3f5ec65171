"""`crest build --engine spark`: the build's SQL on Apache Spark, tokens Parquet -> compact table Parquet.

Spark reads the tokenized corpus (token_table.py's Parquet), runs the very SQL files the DuckDB
build runs (transpiled, see spark_sql.py) and writes `compact_drafts` as Parquet; the DuckDB
writer then loads it and publishes the store within the budget. No key is wider than 64 bits
(n-gram keys pack (level|gid, token) into BIGINT), so every table travels through Parquet as is.
Spark is optional (`pip install 'crest[spark]'`, Java 17+); DuckDB stays the default engine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datastore_service.build.compact_table import Stopwatch, rank_draft_trees
from datastore_service.build.params import BuildParams
from datastore_service.errors import CrestError

# Local mode on a laptop-sized machine; any key can be overridden with --spark-conf.
DEFAULT_CONF = {
    "spark.app.name": "crest-build",
    "spark.driver.memory": "4g",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


@dataclass(frozen=True)
class SparkSettings:
    """Where the build runs: a master URL (local[*], spark://host:7077, yarn, ...) and extra conf."""

    master: str = "local[*]"
    conf: tuple[tuple[str, str], ...] = ()


def require_spark() -> None:
    """One-line errors for what `--engine spark` needs and the machine lacks."""
    missing = [name for name in ("pyspark", "sqlglot") if importlib.util.find_spec(name) is None]
    if missing:
        raise CrestError(f"--engine spark needs {' and '.join(missing)}: pip install 'crest[spark]'")
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and (Path(java_home) / "bin" / "java").exists()) and shutil.which("java") is None:
        raise CrestError("--engine spark needs Java 17 or newer: no java on PATH and JAVA_HOME is unset")


@contextmanager
def spark_session(settings: SparkSettings) -> Iterator[Any]:
    """A SparkSession for the build; one the caller already started is reused and left running."""
    require_spark()
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()
    if existing is not None:
        yield existing
        return
    builder = SparkSession.builder.master(settings.master)
    for key, value in {**DEFAULT_CONF, **dict(settings.conf)}.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: wrong Java, bad master URL or conf
        raise CrestError(f"Spark did not start (master {settings.master}): {str(exc).splitlines()[0]}") from exc
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def build_compact_table(
    session: Any,
    tokens: Path,
    params: BuildParams,
    vocab_size: int,
    output: Path,
    clock: Stopwatch | None = None,
    progress: bool = True,
) -> int:
    """Write the compact table of the corpus in `tokens` as Parquet under `output`; return the candidate count."""
    from datastore_service.build.spark.transpile import SparkConnection

    connection = SparkConnection(session)
    session.read.parquet(str(tokens)).createOrReplaceTempView("tokens")
    candidates = rank_draft_trees(connection, params, vocab_size, clock, progress)
    with (clock or Stopwatch()).phase("export"):
        connection.table("compact_drafts").write.mode("overwrite").parquet(str(output))
    return candidates
