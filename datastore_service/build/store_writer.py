"""Write the published store file: schema by migration, vocab, the kept drafts, metadata.

The byte budget is for the whole file (DuckDB compresses the draft arrays itself: bit-packing
makes a node cost about its token's bits plus a few bits of parent and count). The writer keeps a
prefix of the policy's order: it guesses the prefix from the cost model, writes, measures the real
file, corrects the guess in proportion and rewrites, until the file is within the budget.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from datastore_service.build.selection import contexts_within, estimated_bytes_of
from datastore_service.errors import BudgetError
from datastore_service.sizes import Budget, format_bytes
from datastore_service.store import schema as store_schema
from datastore_service.store.publishing import VersionedStore, fsync_file, remove_path
from datastore_service.store.same_content import same_store_content
from datastore_service.store.serving_arrays import SERVING_SUFFIX, write_serving_for

# Accept a file between these fractions of the byte budget (the published file may be at most
# 10% above the budget; below 92% it wastes room that more contexts could use).
BUDGET_LOW, BUDGET_HIGH = 0.92, 1.10
MAX_WRITE_ATTEMPTS = 6

INSERT_DRAFTS = """
INSERT INTO store.drafts
SELECT context, context_count, expected_accepted, tokens, parents, counts
FROM compact_drafts WHERE priority <= $kept ORDER BY context
"""


# Block size trades fixed overhead (a partly used block per table) against compression (a segment
# lives in one block; 16 KiB blocks halve bit-packing efficiency). 64 KiB measured best for stores.
STORE_BLOCK_SIZE = 65_536


def create_template(path: Path, pieces: list[str]) -> int:
    """An empty store at `path` with the current schema and the vocab table; returns its size."""
    with duckdb.connect() as connection:
        connection.execute(f"ATTACH '{path}' AS store (BLOCK_SIZE {STORE_BLOCK_SIZE})")
    store_schema.upgrade(path)
    with duckdb.connect(str(path)) as connection:
        pieces_table = pa.table(  # noqa: F841 (DuckDB reads it by name)
            {"token_id": pa.array(range(len(pieces)), pa.int32()), "piece": pa.array(pieces, pa.string())}
        )
        connection.execute("INSERT INTO vocab SELECT * FROM pieces_table")
        connection.execute("CHECKPOINT")
    return path.stat().st_size


@dataclass(frozen=True)
class WrittenStore:
    path: Path
    contexts: int
    nodes: int
    file_bytes: int


def write_store(
    connection: duckdb.DuckDBPyConnection, template: Path, target: Path, kept: int, info: dict[str, Any]
) -> WrittenStore:
    """Copy the template to `target`, fill it with the first `kept` trees of `compact_drafts` and `info`."""
    shutil.copyfile(template, target)
    connection.execute(f"ATTACH '{target}' AS store")
    try:
        connection.execute(INSERT_DRAFTS, {"kept": kept})
        contexts, nodes = connection.execute(
            "SELECT count(*), coalesce(sum(len(tokens)), 0) FROM store.drafts"
        ).fetchall()[0]
        row = {**info, "contexts_kept": contexts, "nodes_kept": nodes}
        columns = ", ".join(row)
        connection.execute(
            f"INSERT INTO store.store_info ({columns}) VALUES ({', '.join('$' + key for key in row)})", row
        )
        connection.execute("CHECKPOINT store")
    finally:
        connection.execute("DETACH store")
    fsync_file(target)
    return WrittenStore(target, contexts, nodes, target.stat().st_size)


def write_within_budget(
    connection: duckdb.DuckDBPyConnection,
    template: Path,
    target: Path,
    budget: Budget,
    candidates: int,
    info: dict[str, Any],
) -> WrittenStore:
    if candidates == 0:
        raise BudgetError("no context has a draft tree (corpus too small or min_count too high)")
    if budget.rows is not None:
        return write_store(connection, template, target, min(budget.rows, candidates), info)

    limit = budget.bytes or 0
    fixed = template.stat().st_size
    if limit <= fixed:
        raise BudgetError(
            f"budget {format_bytes(limit)} is below the empty store's size ({format_bytes(fixed)}: schema + vocab)"
        )
    allowance = float(limit - fixed)
    best_fitting, written = 0, None
    for _ in range(MAX_WRITE_ATTEMPTS):
        kept = contexts_within(connection, allowance)
        if kept == 0:
            break
        written = write_store(connection, template, target, kept, info)
        fits = written.file_bytes <= BUDGET_HIGH * limit
        if fits:
            best_fitting = max(best_fitting, kept)
            if written.file_bytes >= BUDGET_LOW * limit or kept == candidates:
                return written
        # Real bytes per estimated byte, measured on this very file, rescales the allowance.
        real_per_estimated = max(written.file_bytes - fixed, 1) / max(estimated_bytes_of(connection, kept), 1.0)
        allowance = (limit - fixed) / real_per_estimated
    if best_fitting == 0:
        raise BudgetError(f"budget {format_bytes(limit)} cannot hold a single draft tree beside schema and vocab")
    if written is not None and written.contexts == best_fitting:
        return written
    return write_store(connection, template, target, best_fitting, info)


def write_and_publish(
    connection: duckdb.DuckDBPyConnection,
    store: VersionedStore,
    budget: Budget,
    candidates: int,
    pieces: list[str],
    info: dict[str, Any],
    before_publish: Callable[[], None] = lambda: None,
) -> tuple[WrittenStore, Path]:
    """Write the ranked trees into a new version of `store` within `budget` and publish it with its
    serving file (unless `before_publish` raises). Returns the published file: the new version, or
    the published one when the new file holds exactly the same (then nothing is published)."""
    version = info["store_version"]
    template, partial = store.scratch(version, "template"), store.scratch(version, "partial")
    serving = store.scratch(version, "serving")
    try:
        create_template(template, pieces)
        written = write_within_budget(connection, template, partial, budget, candidates, info)
        write_serving_for(partial, serving)
        before_publish()
        final, _ = store.publish_unless_identical(
            partial, version, same_store_content, companions={SERVING_SUFFIX: serving}
        )
        return written, final
    finally:
        for scratch in (template, partial, serving):
            remove_path(scratch)
