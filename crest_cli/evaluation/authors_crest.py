"""The CREST authors' datastore, rebuilt faithfully beside ours.

Per context the authors store the tree REST's retriever returns for it: the first k = 5,000
occurrences in suffix-array order, continuations of m = 10 tokens, the c = 64 most frequent
continuation prefixes, then REST's `cut_to_choices` (below). They keep the most frequent contexts
of each length (the paper's rule, lengths 1..N), pickle each tree, compress it with LZMA into a
database row, and draft from the longest stored suffix of the query.

Here the trees come from our REST index over the whole corpus (`RestIndex.draft`, which counts
prefixes exactly as REST's retriever does, with a reproducible tie-break, and never lets a
continuation cross a document's end), and the stores are written in our format, so both storage
figures can be given: our file's bytes, and the bytes of LZMA-compressed pickles of the trees'
paths (what REST's search returns first; the authors pickled its whole answer, so theirs is larger).
"""

from __future__ import annotations

import lzma
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from datastore_service import __version__
from datastore_service.build.store_writer import write_and_publish
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.draft import DraftTree
from datastore_service.rest.index import RestIndex, RestParams
from datastore_service.sizes import Budget
from datastore_service.store.publishing import VersionedStore

# REST's retriever (DraftRetriever's `search`): occurrences read, continuation length, nodes kept.
REST_K, REST_M, REST_C = 5000, 10, 64
# What the store writer's first guess assumes a tree costs (it then measures and corrects).
GUESS_BYTES_PER_CONTEXT, GUESS_BYTES_PER_NODE = 16, 4

TOP_CONTEXTS_SQL = """
SELECT {columns}, count(*) AS occurrences
FROM positions
WHERE t{last} IS NOT NULL
GROUP BY ALL
ORDER BY occurrences DESC, {columns}
LIMIT $top
"""


@dataclass(frozen=True)
class AuthorsTrees:
    """Trees in the paper's priority order (the most frequent contexts of each length in turn)."""

    table: pa.Table  # context, context_count, expected_accepted, tokens, parents, counts, pickled_bytes


def cut_to_choices(tree: DraftTree, choices: int = REST_C) -> DraftTree:
    """REST's cut: every node is a path from the root; paths with the most distinct tokens are
    dropped first (ties: the less frequent first) until the paths' distinct tokens sum to at most
    `choices`; the tree keeps the kept paths and their prefixes."""
    paths = _paths(tree)
    distinct = [len(set(path)) for path in paths]
    total = sum(distinct)
    dropped = set()
    for node in sorted(range(len(paths)), key=lambda i: (-distinct[i], -i)):
        if total <= choices:
            break
        total -= distinct[node]
        dropped.add(node)
    kept = np.zeros(len(paths), bool)
    for node in range(len(paths) - 1, -1, -1):
        if node not in dropped or kept[node]:
            kept[node] = True
            if tree.parents[node] >= 0:
                kept[tree.parents[node]] = True
    new_index = np.cumsum(kept) - 1
    parents = np.where(tree.parents[kept] >= 0, new_index[np.maximum(tree.parents[kept], 0)], -1).astype(np.int32)
    probabilities = tree.probabilities[kept]
    return DraftTree(tree.tokens[kept], parents, probabilities, tree.context_length, float(probabilities.sum()))


def _paths(tree: DraftTree) -> list[tuple[int, ...]]:
    paths: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        paths.append((paths[parent] if parent >= 0 else ()) + (token,))
    return paths


def pickled_bytes(tree: DraftTree) -> int:
    """Bytes of the tree as the authors keep it: its paths padded with -2 (REST's search result),
    pickled and LZMA-compressed."""
    paths = _paths(tree)
    longest = max((len(p) for p in paths), default=0)
    padded = [list(p) + [-2] * (longest - len(p)) for p in paths]
    return len(lzma.compress(pickle.dumps(padded)))


def frequent_contexts(tokens_parquet: Path, max_context: int, top: int) -> list[list[tuple[int, ...]]]:
    """Per length 1..max_context, the `top` most frequent n-grams (ties by tokens), most frequent first."""
    columns = [f"t{k}" for k in range(max_context)]
    leads = ", ".join(
        ["token AS t0"] + [f"lead(token, {k}) OVER next_in_document AS t{k}" for k in range(1, max_context)]
    )
    with duckdb.connect() as connection:
        connection.execute("SET preserve_insertion_order = false")
        connection.execute(
            f"CREATE TEMP TABLE positions AS SELECT {leads} FROM read_parquet($path) "
            "WINDOW next_in_document AS (PARTITION BY doc_id ORDER BY pos)",
            {"path": str(tokens_parquet)},
        )
        per_length = []
        for length in range(1, max_context + 1):
            query = TOP_CONTEXTS_SQL.format(columns=", ".join(columns[:length]), last=length - 1)
            rows = connection.execute(query, {"top": top}).fetchall()
            per_length.append([tuple(row[:length]) for row in rows])
    return per_length


def authors_trees(
    rest: RestIndex,
    contexts_per_length: Sequence[Sequence[tuple[int, ...]]],
    wanted_bytes: float,
    progress: bool,
    cut: bool = True,
) -> AuthorsTrees:
    """REST's cut trees of the contexts in the paper's order, until the cost model's guess of
    their size passes `wanted_bytes` (the largest budget, with room for the writer's correction)."""
    order = [
        ranked[rank]
        for rank in range(max(map(len, contexts_per_length)))
        for ranked in contexts_per_length
        if rank < len(ranked)
    ]
    rows: dict[str, list] = {
        name: []
        for name in ("context", "context_count", "expected_accepted", "tokens", "parents", "counts", "pickled_bytes")
    }
    guessed = 0.0
    for context in tqdm(order, desc="authors' trees", unit="context", disable=not progress):
        query = np.array(context, np.int64)
        length, low, high = rest.longest_match(query)
        if length != len(context):
            continue  # never: every context is a corpus n-gram
        tree = rest.draft(query, REST_C, REST_M)
        tree = cut_to_choices(tree) if cut else tree
        if len(tree) == 0:
            continue  # the context only ends documents
        retrieved = min(high - low, REST_K)
        counts = np.rint(tree.probabilities.astype(np.float64) * retrieved).astype(np.int64)
        rows["context"].append(list(context))
        rows["context_count"].append(retrieved)
        rows["expected_accepted"].append(float(counts.sum() / retrieved))
        rows["tokens"].append(tree.tokens.tolist())
        rows["parents"].append(tree.parents.tolist())
        rows["counts"].append(counts.tolist())
        rows["pickled_bytes"].append(pickled_bytes(tree) + 2 * len(context))  # + the context as 16-bit key
        guessed += GUESS_BYTES_PER_CONTEXT + GUESS_BYTES_PER_NODE * len(tree)
        if guessed > wanted_bytes:
            break
    table = pa.table(
        {
            "context": pa.array(rows["context"], pa.list_(pa.int32())),
            "context_count": pa.array(rows["context_count"], pa.int64()),
            "expected_accepted": pa.array(rows["expected_accepted"], pa.float32()),
            "tokens": pa.array(rows["tokens"], pa.list_(pa.int32())),
            "parents": pa.array(rows["parents"], pa.list_(pa.int16())),
            "counts": pa.array(rows["counts"], pa.list_(pa.int64())),
            "pickled_bytes": pa.array(rows["pickled_bytes"], pa.int64()),
        }
    )
    return AuthorsTrees(table)


def cached_authors_trees(
    cache: Path,
    rest_store: Path,
    tokens_parquet: Path,
    max_context: int,
    wanted_bytes: float,
    progress: bool,
    cut: bool = True,
) -> AuthorsTrees:
    if cache.exists():
        return AuthorsTrees(pq.read_table(cache))
    rest = RestIndex.load(rest_store, asdict(RestParams(n_max=max_context, n_min=1, k=REST_K, m=REST_M, c=REST_C)))
    top = int(wanted_bytes / (GUESS_BYTES_PER_CONTEXT + GUESS_BYTES_PER_NODE) / max_context) + 1
    trees = authors_trees(rest, frequent_contexts(tokens_parquet, max_context, top), wanted_bytes, progress, cut)
    partial = cache.with_suffix(".partial")
    pq.write_table(trees.table, partial)
    partial.replace(cache)
    return trees


@dataclass(frozen=True)
class AuthorsStore:
    path: Path
    file_bytes: int
    contexts: int
    pickled_bytes: int  # the same contexts' trees as LZMA-compressed pickles


def write_authors_store(
    trees: AuthorsTrees,
    output: Path,
    budget: Budget,
    tokenizer: TargetTokenizer,
    corpus: dict,
    max_context: int,
    cut: bool = True,
) -> AuthorsStore:
    """A store of our format holding the first trees (paper's order) that fit `budget`."""
    table = trees.table
    nodes = pc.list_value_length(table.column("tokens")).to_numpy()
    guessed = np.cumsum(GUESS_BYTES_PER_CONTEXT + GUESS_BYTES_PER_NODE * nodes.astype(np.float64))
    compact = (
        table.drop_columns(["pickled_bytes"])
        .append_column("priority", pa.array(np.arange(1, table.num_rows + 1), pa.int64()))
        .append_column("cumulative_bytes", pa.array(guessed))
    )
    store = VersionedStore(output)
    version = store.new_version()
    info = {
        **corpus,
        "store_version": version,
        "crest_version": __version__,
        "created_at": datetime.now(timezone.utc),
        "tokenizer_name": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "max_context": max_context,
        "max_depth": REST_M,
        "policy": "authors",
        "build_params": {
            "top_c": REST_C,
            "k": REST_K,
            "m": REST_M,
            "cut": "cut_to_choices" if cut else "none",
            "max_context": max_context,
        },
    }
    with duckdb.connect() as connection:
        connection.register("authors_trees", compact)
        connection.execute("CREATE TEMP TABLE compact_drafts AS SELECT * FROM authors_trees")
        written, _ = write_and_publish(connection, store, budget, table.num_rows, tokenizer.pieces(), info)
    pickled = int(np.sum(table.column("pickled_bytes").to_numpy()[: written.contexts]))
    return AuthorsStore(store.path, written.file_bytes, written.contexts, pickled)
