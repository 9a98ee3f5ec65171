"""Counts of observed token sequences as shard count files, and sums of such files.

A learning server snapshots what it observed with `write_sequence_counts` (each sequence its own
document, every n-gram kept: min_count applies only to sums, as for any shard), and a compaction
sums the snapshots into one file with `sum_count_files`. Both write the format of
shard_counts.py, so `merge_shard_counts` adds them to a corpus's counts exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from datastore_service.build.ngram_counting import count_ngrams_up_to
from datastore_service.build.shard_counts import merge_count_files
from datastore_service.build.token_table import TOKEN_SCHEMA


def _connection(threads: int) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("SET preserve_insertion_order = false")
    connection.execute(f"SET threads = {int(threads)}")
    return connection


def _copy_ngrams(connection: duckdb.DuckDBPyConnection, target: Path) -> None:
    quoted = str(target).replace("'", "''")
    connection.execute(f"COPY (SELECT * FROM ngrams ORDER BY level, gid) TO '{quoted}' (FORMAT parquet)")


def write_sequence_counts(
    sequences: Sequence[np.ndarray], levels: int, vocab_size: int, target: Path, threads: int = 1
) -> int:
    """Every n-gram (1..levels tokens) of the sequences, counted, at `target`; returns the token count."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    flat = np.concatenate(sequences).astype(np.int32) if len(sequences) else np.empty(0, np.int32)
    tokens = pa.table(  # noqa: F841 (DuckDB reads it by name)
        [np.repeat(np.arange(len(lengths), dtype=np.int32), lengths), np.arange(len(flat), dtype=np.int64), flat],
        schema=TOKEN_SCHEMA,
    )
    with _connection(threads) as connection:
        connection.execute("CREATE TEMP TABLE tokens AS SELECT * FROM tokens")
        count_ngrams_up_to(connection, levels, 1, vocab_size, progress=False)
        _copy_ngrams(connection, target)
    return len(flat)


def sum_count_files(files: Sequence[Path], levels: int, target: Path, threads: int = 1) -> None:
    """One complete count file holding the summed counts of `files`."""
    with _connection(threads) as connection:
        merge_count_files(connection, files, levels, min_count=1, progress=False)
        _copy_ngrams(connection, target)


def tokens_in(path: Path) -> int:
    """Tokens a count file was made from (the sum of its unigram counts)."""
    with duckdb.connect() as connection:
        found = connection.execute(
            "SELECT coalesce(sum(count), 0) FROM read_parquet($path) WHERE level = 1", {"path": str(path)}
        ).fetchall()
    return int(found[0][0])
