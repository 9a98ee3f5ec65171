"""`crest inspect`: a store's metadata and its most common contexts with their drafts as text."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from datastore_service.rest.format import is_rest_file, open_rest_file
from datastore_service.sizes import format_bytes
from datastore_service.store.reader import open_store, reading, resolve_store, store_info

# The most common contexts and the text of their `branches` most likely draft nodes.
TOP_CONTEXTS = """
WITH most_common AS (
    SELECT * FROM drafts ORDER BY context_count DESC, context LIMIT $limit
),
best_nodes AS (
    SELECT
        context, context_count, expected_accepted, len(tokens) AS nodes,
        unnest(draft_paths(tokens, parents)[1:$branches]) AS path,
        unnest(range(least(len(tokens), $branches))) AS rank
    FROM most_common
)
SELECT detokenize(context), context_count, expected_accepted, nodes, list(detokenize(path) ORDER BY rank)
FROM best_nodes
GROUP BY context, context_count, expected_accepted, nodes
ORDER BY context_count DESC, context
"""


def inspect_store(path: Path, limit: int = 10, branches: int = 3, console: Console | None = None) -> None:
    console = console or Console()
    resolved = resolve_store(path)
    if resolved.is_file() and is_rest_file(resolved):
        _inspect_rest(path, resolved, console)
        return
    with open_store(path) as connection, reading(path):
        info = store_info(connection, path)
        size = resolved.stat().st_size
        table = Table(title=f"{path} -> {resolved.name}", show_header=False)
        for key, value in info.items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
        table.add_row("file size", format_bytes(size))
        table.add_row("bytes per context", f"{size / max(info['contexts_kept'], 1):.1f}")
        table.add_row("bytes per node", f"{size / max(info['nodes_kept'], 1):.2f}")
        console.print(table)

        contexts = Table(title=f"The {limit} most common contexts")
        for column in ("context", "count", "expected accepted", "nodes", f"{branches} most likely drafts"):
            contexts.add_column(column)
        rows = connection.execute(TOP_CONTEXTS, {"limit": limit, "branches": branches}).fetchall()
        for text, count, expected, nodes, best in rows:
            contexts.add_row(repr(text), f"{count:,}", f"{expected:.2f}", str(nodes), "  ".join(map(repr, best)))
        console.print(contexts)


def _inspect_rest(path: Path, resolved: Path, console: Console) -> None:
    """A REST baseline store has no draft table to show: its metadata and what its bytes hold."""
    rest = open_rest_file(resolved)
    table = Table(title=f"{path} -> {resolved.name} (REST baseline)", show_header=False)
    for key, value in rest.metadata.items():
        if key != "arrays":
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    for name, array in (("tokens", rest.tokens), ("suffix_array", rest.suffix_array)):
        table.add_row(name, f"{len(array):,} x {array.dtype.itemsize} bytes = {format_bytes(array.nbytes)}")
    table.add_row("file size", format_bytes(resolved.stat().st_size))
    console.print(table)
