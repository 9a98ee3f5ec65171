"""`crest build --engine spark`: the build's SQL on Apache Spark, tokens Parquet -> compact table Parquet.

Spark reads the tokenized corpus (token_table.py's Parquet), runs the very SQL files the DuckDB
build runs (transpiled, see transpile.py) and writes `compact_drafts` as Parquet; the DuckDB
writer then loads it and publishes the store within the budget. No key is wider than 64 bits
(n-gram keys pack (level|gid, token) into BIGINT), so every table travels through Parquet as is.
Spark is optional (`pip install 'crest[spark]'`, Java 17+); DuckDB stays the default engine.

A sharded build counts each shard completely on Spark (cached like DuckDB's shard counts, and
readable by either engine), sums them with the same merge SQL and ranks the trees once.

The driver and its block manager listen on loopback by default with a local master or a master
on loopback (Spark would otherwise take the first non-loopback interface); a remote cluster must
reach the driver, so there the operator's (or Spark's) address stands. `quiet` sends the JVM's own
output (startup banner, warnings) to a temporary file: with `crest build --quiet` only the build's
summary reaches the terminal. Starting Spark and planning its many small jobs is a fixed cost
whatever the corpus size (measured in docs/DEPLOY.md): small corpora build faster on DuckDB.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datastore_service.build.compact_table import Stopwatch, rank_counted_trees, rank_draft_trees
from datastore_service.build.ngram_counting import count_ngrams_up_to
from datastore_service.build.params import BuildParams
from datastore_service.build.shard_counts import merge_counted_shards, shard_counts_path
from datastore_service.build.token_table import TokenizedCorpus
from datastore_service.errors import CrestError

LOOPBACK = "127.0.0.1"
LOCAL_IP_ENV = "SPARK_LOCAL_IP"  # Spark's own setting for the address its daemons and driver use

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
    bind_address: str | None = None  # driver and block manager; None: see driver_address()
    quiet: bool = False  # the JVM's own output goes to a temporary file, not the terminal

    def driver_address(self) -> str | None:
        """The given address, else $SPARK_LOCAL_IP, else loopback for a local or loopback master;
        None leaves it to Spark (a remote cluster must reach the driver)."""
        if self.bind_address or os.environ.get(LOCAL_IP_ENV):
            return self.bind_address or os.environ[LOCAL_IP_ENV]
        return LOOPBACK if is_local_master(self.master) else None

    def spark_conf(self) -> dict[str, str]:
        """DEFAULT_CONF, the driver's address, then --spark-conf: later ones win."""
        address = self.driver_address()
        bind = {"spark.driver.host": address, "spark.driver.bindAddress": address} if address else {}
        return {**DEFAULT_CONF, **bind, **dict(self.conf)}


def is_local_master(master: str) -> bool:
    """local[...] or a standalone master (or HA list of them) on loopback."""
    if master.startswith("local"):
        return True
    if not master.startswith("spark://"):
        return False
    hosts = [address.rpartition(":")[0].strip("[]") for address in master.removeprefix("spark://").split(",")]
    return all(host == "localhost" or _is_loopback_ip(host) for host in hosts)


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    conf = settings.spark_conf()
    builder = SparkSession.builder.master(settings.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        with _jvm_launch(conf.get("spark.driver.host"), settings.quiet):
            session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: wrong Java, bad master URL or conf
        raise CrestError(f"Spark did not start (master {settings.master}): {str(exc).splitlines()[0]}") from exc
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@contextmanager
def _jvm_launch(local_ip: str | None, quiet: bool) -> Iterator[None]:
    """While pyspark starts its JVM (the first session of a process): $SPARK_LOCAL_IP for it (the
    address Spark names itself by, which also silences its warning that it picked an interface), and
    with `quiet` its stdout and stderr on a temporary file, which it keeps for its lifetime."""
    saved_ip = os.environ.get(LOCAL_IP_ENV)
    if local_ip:
        os.environ[LOCAL_IP_ENV] = local_ip
    saved_fds: list[int] = []
    try:
        if quiet:
            sys.stdout.flush()
            sys.stderr.flush()
            with tempfile.TemporaryFile(prefix="crest-spark-") as sink:
                saved_fds = [os.dup(1), os.dup(2)]
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
        yield
    finally:
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        if saved_ip is None:
            os.environ.pop(LOCAL_IP_ENV, None)
        else:
            os.environ[LOCAL_IP_ENV] = saved_ip


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


def build_sharded_compact_table(
    session: Any,
    shards: list[TokenizedCorpus],
    params: BuildParams,
    vocab_size: int,
    output: Path,
    clock: Stopwatch | None = None,
    progress: bool = True,
) -> int:
    """As build_compact_table, for the union of `shards`: each counted completely (cached), then summed."""
    from pyspark.sql import functions

    from datastore_service.build.spark.transpile import SparkConnection

    clock = clock or Stopwatch()
    connection = SparkConnection(session)
    with clock.phase("count"):
        counted = [spark_shard_counts(connection, shard, params.levels, vocab_size) for shard in shards]
        frames = [
            session.read.parquet(str(path)).select(
                functions.lit(index).cast("int").alias("shard"), "level", "gid", "parent", "token", "count"
            )
            for index, path in enumerate(counted)
        ]
        union = frames[0]
        for frame in frames[1:]:
            union = union.unionByName(frame)
        connection.register("shard_ngrams", union)
        merge_counted_shards(connection, params.levels, params.min_count, progress)
    candidates = rank_counted_trees(connection, params, clock, progress)
    with clock.phase("export"):
        connection.table("compact_drafts").write.mode("overwrite").parquet(str(output))
    return candidates


def spark_shard_counts(connection: Any, shard: TokenizedCorpus, levels: int, vocab_size: int) -> Path:
    """The shard's complete n-gram counts, cached where DuckDB caches them (a folder of Parquet here)."""
    target = shard_counts_path(shard, levels)
    if target.exists():  # either engine's
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    connection.session.read.parquet(str(shard.parquet)).createOrReplaceTempView("tokens")
    count_ngrams_up_to(connection, levels, 1, vocab_size, progress=False)
    try:
        connection.table("ngrams").select("level", "gid", "parent", "token", "count").write.mode("overwrite").parquet(
            str(partial)
        )
        partial.replace(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
