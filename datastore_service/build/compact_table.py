"""From table `tokens` to the compact table: counting, top-c trees, selection order, arrays.

The same SQL files run on either engine: `connection` is a DuckDB connection, or a
`spark_sql.SparkConnection` that transpiles each statement to Spark SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from datastore_service.build.draft_trees import build_candidate_trees
from datastore_service.build.ngram_counting import count_ngrams
from datastore_service.build.params import BuildParams
from datastore_service.build.selection import CostModel, rank_contexts
from datastore_service.build.sql_files import SqlConnection, run_sql


class Stopwatch:
    """Seconds per build phase, for the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def rank_draft_trees(
    connection: SqlConnection,
    params: BuildParams,
    vocab_size: int,
    clock: Stopwatch | None = None,
    progress: bool = True,
) -> int:
    """Fill `compact_drafts` (sql/09) from table `tokens`; returns the candidate context count."""
    clock = clock or Stopwatch()
    with clock.phase("count"):
        count_ngrams(connection, params, vocab_size, progress)
    return rank_counted_trees(connection, params, clock, progress)


def rank_counted_trees(connection: SqlConnection, params: BuildParams, clock: Stopwatch, progress: bool = True) -> int:
    """Fill `compact_drafts` from table `ngrams`; returns the candidate context count."""
    with clock.phase("trees"):
        build_candidate_trees(connection, params, progress)
        candidates = rank_contexts(connection, params.policy, CostModel())
        run_sql(connection, "09_compact_drafts.sql")
    return candidates


def rerank_compact_table(connection: SqlConnection, policy: str) -> None:
    """Rebuild `compact_drafts` in another policy's order from the trees already ranked (no recount)."""
    rank_contexts(connection, policy, CostModel())
    run_sql(connection, "09_compact_drafts.sql")
