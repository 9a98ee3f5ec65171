"""The lookup answer spelled out as a direct SQL query of a store file, for golden tests."""

from __future__ import annotations

from pathlib import Path

import duckdb

from datastore_service.store.reader import resolve_store


def sql_answer(store: Path, query: list[int], max_nodes: int, max_depth: int, selection: str):
    """The answer spelled out in SQL over the store: matching suffixes, scores, first nodes."""
    with duckdb.connect(str(resolve_store(store)), read_only=True) as connection:
        rows = connection.execute(
            """
            SELECT context, tokens, parents, counts, context_count
            FROM drafts
            WHERE context IN (SELECT $query[-n:] FROM range(1, len($query) + 1) AS r(n))
            """,
            {"query": query},
        ).fetchall()
    best = None
    for context, tokens, parents, counts, context_count in rows:
        k = min(max_nodes, len(tokens))
        score = sum(counts[:k]) / context_count
        key = (len(context),) if selection == "longest" else (round(score, 5), len(context))
        if best is None or key > best[0]:
            best = (key, context, tokens[:k], parents[:k], counts[:k], context_count)
    if best is None:
        return 0, []
    _, context, tokens, parents, counts, context_count = best
    depth = []
    for parent in parents:
        depth.append(1 if parent < 0 else depth[parent] + 1)
    kept = [i for i in range(len(tokens)) if depth[i] <= max_depth]
    renumber = {old: new for new, old in enumerate(kept)}
    nodes = [(tokens[i], renumber.get(parents[i], -1), counts[i] / context_count) for i in kept]
    return len(context), nodes
