"""Sharded builds: n-gram counts per shard, cached, merged by summing into one `ngrams` table.

Counts are additive, so a store built from shards A and B equals one built from A+B, if each
shard is counted completely (min_count 1) and min_count applies only to the sums (see
sql/01_merge_shards_start.sql). A shard's counts are cached next to its tokens, keyed by the
token file (corpus content + tokenizer) and the n-gram length, so adding a shard to an earlier
build counts only the new shard. The price: a complete count keeps every distinct n-gram (up to
tokens x levels rows per shard), where a pruned count keeps only the frequent ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import duckdb
from tqdm import tqdm

from datastore_service.build.caches import mark_used
from datastore_service.build.ngram_counting import count_ngrams_up_to
from datastore_service.build.sql_files import SqlConnection, run_sql
from datastore_service.build.token_table import TokenizedCorpus
from datastore_service.paths import cache_dir

SHARD_NGRAMS_SCHEMA = "(shard INTEGER, level TINYINT, gid BIGINT, parent BIGINT, token INTEGER, count BIGINT)"
# What counting a shard leaves in its connection (sql/01-03), dropped before the next shard
COUNTING_TABLES = ("tokens", "ngrams", "level_keys", "level_grams", "next_level_keys")


def shard_counts_path(tokenized: TokenizedCorpus, levels: int) -> Path:
    """Where a shard's counts are cached: one Parquet file (DuckDB wrote it) or a folder of them (Spark)."""
    return cache_dir("counts") / f"{tokenized.parquet.stem}-levels{levels}.parquet"


def parquet_glob(path: Path) -> str:
    """What DuckDB's read_parquet takes for a cached file or folder."""
    return str(path / "*.parquet") if path.is_dir() else str(path)


def shard_counts(
    tokenized: TokenizedCorpus, levels: int, vocab_size: int, connection: duckdb.DuckDBPyConnection | None = None
) -> Path:
    """Parquet `(level, gid, parent, token, count)` of every n-gram of the shard up to `levels` tokens.
    Counted in `connection` (the build's: its memory limit and scratch folder hold) when given, its
    tables dropped after; else in a connection of DuckDB's defaults."""
    target = shard_counts_path(tokenized, levels)
    if target.exists():
        mark_used(target)
        return target
    partial = target.with_suffix(f".partial-{os.getpid()}")
    try:
        with duckdb.connect() if connection is None else nullcontext(connection) as counting:
            counting.execute("SET preserve_insertion_order = false")
            counting.execute(
                "CREATE TEMP TABLE tokens AS SELECT * FROM read_parquet($path)", {"path": str(tokenized.parquet)}
            )
            count_ngrams_up_to(counting, levels, 1, vocab_size, progress=False)
            quoted = str(partial).replace("'", "''")
            counting.execute(f"COPY ngrams TO '{quoted}' (FORMAT parquet)")
            for table in COUNTING_TABLES:
                counting.execute(f"DROP TABLE IF EXISTS {table}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def merge_shard_counts(
    connection: duckdb.DuckDBPyConnection,
    shards: list[TokenizedCorpus],
    levels: int,
    min_count: int,
    vocab_size: int,
    progress: bool = True,
    counted: Sequence[Path] = (),
) -> None:
    """Fill `ngrams` with the summed counts of `shards` (and of already `counted` shard files), as a
    count over their union would."""
    files = [
        shard_counts(shard, levels, vocab_size, connection)
        for shard in tqdm(shards, desc="count shards", unit="shard", disable=not progress)
    ]
    merge_count_files(connection, [*files, *counted], levels, min_count, progress)


def merge_count_files(
    connection: duckdb.DuckDBPyConnection, files: Sequence[Path], levels: int, min_count: int, progress: bool = True
) -> None:
    """Fill `ngrams` with the summed counts of shard count files, keeping n-grams seen >= min_count times."""
    connection.execute(f"CREATE OR REPLACE TEMP TABLE shard_ngrams {SHARD_NGRAMS_SCHEMA}")
    for index, path in enumerate(files):
        connection.execute(
            "INSERT INTO shard_ngrams SELECT $shard, * FROM read_parquet($path)",
            {"shard": index, "path": parquet_glob(path)},
        )
    merge_counted_shards(connection, levels, min_count, progress)


def merge_counted_shards(connection: SqlConnection, levels: int, min_count: int, progress: bool = True) -> None:
    """`ngrams` from table `shard_ngrams` (SHARD_NGRAMS_SCHEMA), on either engine."""
    counts = {"min_count": min_count}
    run_sql(connection, "01_merge_shards_start.sql", counts)
    for level in tqdm(range(2, levels + 1), desc="merge counts", unit="level", disable=not progress):
        run_sql(connection, "02_merge_shards_level.sql", counts, level=level)
    connection.execute(
        "DROP TABLE shard_ngrams; DROP TABLE shard_gids; DROP TABLE shard_level; DROP TABLE merged_level"
    )
