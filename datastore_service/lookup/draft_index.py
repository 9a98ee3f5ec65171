"""The serving engine: a store's drafts in memory, answering batches of lookups with numpy.

Layout (built once at load, from columnar fetches):
- `context_matrix[K, N]`: stored contexts right-aligned (newest token last), -1 padded;
  `context_lengths[K]`; `context_hashes[K]` sorted ascending (all per-tree arrays follow it).
- Nodes of all trees flattened: `node_tokens`, `node_parents` (tree-local), `node_probabilities`,
  `node_depths`, and `node_cumulative` (running sum of probabilities inside each tree), with
  `tree_offsets[K+1]`.

A batch lookup hashes every suffix (lengths 1..N) of every query at once, finds candidates with
one `searchsorted`, verifies candidates token by token (so matches are exact whatever the hash
does), picks one tree per query, and gathers the first `max_nodes` nodes of each chosen tree.

Example: a store with contexts `[12]` and `[7, 12]`; the query `[5, 7, 12]` matches both suffixes
`[12]` and `[7, 12]`. LONGEST_MATCH answers with the tree of `[7, 12]`; SCORED answers with
whichever tree expects more accepted tokens within the query's `max_nodes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datastore_service.draft import DraftBatch, QueryBatch, QueryError, prepare_queries, right_aligned
from datastore_service.errors import StoreError
from datastore_service.store.info import StoreInfo
from datastore_service.store.reader import open_store, reading, resolve_store

SELECTIONS = ("scored", "longest")
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_HASH_SEEDS = (0x2545F4914F6CDD1D, 0x6A09E667F3BCC909, 0xBB67AE8584CAA73B)

FETCH_DRAFTS = "SELECT context, context_count, tokens, parents, counts FROM drafts"


def suffix_hashes(tails: np.ndarray, seed: int) -> np.ndarray:
    """hashes[:, n-1] = hash of each row's last n tokens (rows right-aligned, newest token last)."""
    rows, width = tails.shape
    hashes = np.empty((rows, width), np.uint64)
    state = np.full(rows, seed, np.uint64)
    with np.errstate(over="ignore"):
        for n in range(1, width + 1):
            state = (state ^ (tails[:, width - n].astype(np.uint64) + np.uint64(1))) * _HASH_MULTIPLIER
            state ^= state >> np.uint64(31)
            hashes[:, n - 1] = state
    return hashes


class DraftIndex:
    def __init__(
        self,
        info: StoreInfo,
        path: Path,
        contexts: list[np.ndarray],
        context_counts: np.ndarray,
        node_tokens: np.ndarray,
        node_parents: np.ndarray,
        node_counts: np.ndarray,
        tree_offsets: np.ndarray,
    ) -> None:
        self.info, self.path = info, path
        width = max(info.max_context, 1)
        lengths = np.fromiter((len(c) for c in contexts), np.int64, len(contexts))
        if len(lengths) and lengths.max() > width:
            raise StoreError(f"a stored context has {lengths.max()} tokens, more than max_context {width}")
        matrix = right_aligned(np.concatenate(contexts).astype(np.int64), lengths, width)
        seed, hashes = _collision_free_hashes(matrix, lengths)
        order = np.argsort(hashes, kind="stable")
        self.width, self.hash_seed = width, seed
        self.context_hashes = hashes[order]
        self.context_matrix, self.context_lengths = matrix[order], lengths[order]
        # Reorder the trees to hash order, keeping each tree's nodes contiguous.
        sizes = np.diff(tree_offsets)[order]
        gather = _ranges(tree_offsets[:-1][order], sizes)
        self.tree_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.tree_sizes = sizes.astype(np.int64)
        tree_of_node = np.repeat(np.arange(len(order)), sizes)
        self.node_tokens = node_tokens[gather].astype(np.int32)
        self.node_parents = node_parents[gather].astype(np.int32)
        self.node_probabilities = (node_counts[gather] / context_counts[order][tree_of_node]).astype(np.float32)
        self.node_cumulative = _cumsum_within(self.node_probabilities.astype(np.float64), self.tree_offsets)
        self.node_depths = _depths(self.node_parents, self.tree_offsets[:-1][tree_of_node])

    @classmethod
    def load(cls, path: Path) -> DraftIndex:
        """Read a published store (its current version) into memory."""
        resolved = resolve_store(path)
        with open_store(resolved) as connection, reading(resolved):
            info = StoreInfo.read(connection, resolved)
            table = connection.sql(FETCH_DRAFTS).to_arrow_table()
        if table.num_rows == 0:
            raise StoreError(f"{path} holds no drafts")
        table = table.combine_chunks()
        lists = {name: table.column(name).chunk(0) for name in ("context", "tokens", "parents", "counts")}
        context_values = lists["context"].values.to_numpy()
        context_offsets = lists["context"].offsets.to_numpy()
        contexts = np.split(context_values, context_offsets[1:-1])
        return cls(
            info,
            resolved,
            contexts,
            table.column("context_count").to_numpy().astype(np.float64),
            lists["tokens"].values.to_numpy(),
            lists["parents"].values.to_numpy(),
            lists["counts"].values.to_numpy(),
            lists["tokens"].offsets.to_numpy().astype(np.int64),
        )

    # -- queries ------------------------------------------------------------------------------

    def prepare(
        self, sequences: Sequence[Sequence[int]], max_nodes: Sequence[int] | int = 0, max_depth: Sequence[int] | int = 0
    ) -> QueryBatch:
        """Validate queries (QueryError says which and why) and lay them out for `lookup_batch`."""
        return prepare_queries(
            sequences, max_nodes, max_depth, self.width, self.info.vocab_size, default_nodes=max(self.info.max_nodes, 1)
        )

    def lookup(
        self,
        sequences: Sequence[Sequence[int]],
        max_nodes: Sequence[int] | int = 0,
        max_depth: Sequence[int] | int = 0,
        selection: str = "scored",
    ) -> DraftBatch:
        return self.lookup_batch(self.prepare(sequences, max_nodes, max_depth), selection)

    def lookup_batch(self, batch: QueryBatch, selection: str = "scored") -> DraftBatch:
        trees, lengths = self._choose(batch, selection)
        return self._gather(trees, lengths, batch)

    def _choose(self, batch: QueryBatch, selection: str) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the chosen tree (-1 = none) and the matched context length (0 = none)."""
        if selection not in SELECTIONS:
            raise QueryError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
        width = self.width
        hashes = suffix_hashes(batch.tails, self.hash_seed)  # [B, N]
        where = np.minimum(np.searchsorted(self.context_hashes, hashes), len(self.context_hashes) - 1)
        suffix_length = np.arange(1, width + 1)[None, :]  # [1, N]
        matched = (self.context_hashes[where] == hashes) & (self.context_lengths[where] == suffix_length)
        matched &= suffix_length <= batch.lengths[:, None]
        # Exact check: the stored context equals the query's suffix of that length, token by token.
        in_suffix = np.arange(width)[None, None, :] >= (width - suffix_length)[:, :, None]  # [1, N, N]
        same = (self.context_matrix[where] == batch.tails[:, None, :]) | ~in_suffix
        matched &= same.all(axis=2)
        if selection == "longest":
            value = np.where(matched, suffix_length, 0).astype(np.float64)
        else:
            kept = np.minimum(batch.max_nodes[:, None], self.tree_sizes[where])
            value = np.where(matched, self.node_cumulative[self.tree_offsets[where] + kept - 1], -1.0)
        # Highest value wins; among equals the longest context (scan from the longest down).
        best = width - 1 - np.argmax(value[:, ::-1], axis=1)
        rows = np.arange(len(best))
        found = matched[rows, best]
        return np.where(found, where[rows, best], -1), np.where(found, best + 1, 0)

    def _gather(self, trees: np.ndarray, context_lengths: np.ndarray, batch: QueryBatch) -> DraftBatch:
        found = trees >= 0
        safe = np.where(found, trees, 0)
        take = np.where(found, np.minimum(batch.max_nodes, self.tree_sizes[safe]), 0)
        starts = self.tree_offsets[safe]
        nodes = _ranges(starts, take)
        query_of_node = np.repeat(np.arange(len(trees)), take)
        keep = self.node_depths[nodes] <= batch.max_depth[query_of_node]
        local_parents = self.node_parents[nodes]
        if not keep.all():
            # Dropping deep nodes shifts indices: renumber the kept nodes' parents.
            first = np.concatenate([[0], np.cumsum(take)[:-1]])
            new_index = np.cumsum(keep) - 1
            has_parent = local_parents >= 0
            parent_flat = first[query_of_node] + np.where(has_parent, local_parents, 0)
            new_first = new_index[first[query_of_node]] + ~keep[first[query_of_node]]
            local_parents = np.where(has_parent, new_index[parent_flat] - new_first, -1)
            nodes, query_of_node, local_parents = nodes[keep], query_of_node[keep], local_parents[keep]
        probabilities = self.node_probabilities[nodes]
        sizes = np.bincount(query_of_node, minlength=len(trees))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        scores = np.bincount(query_of_node, weights=probabilities, minlength=len(trees)).astype(np.float32)
        return DraftBatch(
            self.node_tokens[nodes],
            local_parents.astype(np.int32),
            probabilities,
            offsets,
            np.where(sizes > 0, context_lengths, 0).astype(np.int32),
            scores,
        )


def _collision_free_hashes(matrix: np.ndarray, lengths: np.ndarray) -> tuple[int, np.ndarray]:
    """Hash every stored context; pick a seed under which no two stored contexts collide."""
    for seed in _HASH_SEEDS:
        hashes = suffix_hashes(matrix, seed)[np.arange(len(lengths)), lengths - 1]
        if len(np.unique(hashes)) == len(hashes):
            return seed, hashes
    raise StoreError("stored contexts collide under every hash seed (duplicate contexts in the store?)")


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + size) for each pair, without a Python loop."""
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.int64)
    ends = np.cumsum(sizes)
    return np.repeat(starts - ends + sizes, sizes) + np.arange(total)


def _cumsum_within(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    running = np.cumsum(values)
    before = np.concatenate([[0.0], running])[offsets[:-1]]
    return (running - np.repeat(before, np.diff(offsets))).astype(np.float32)


def _depths(parents: np.ndarray, tree_start_of_node: np.ndarray) -> np.ndarray:
    """Depth of every node; parents precede children, so a few vectorized passes settle it."""
    depths = np.ones(len(parents), np.int32)
    has_parent = parents >= 0
    parent_flat = tree_start_of_node + np.where(has_parent, parents, 0)
    while True:
        updated = np.where(has_parent, depths[parent_flat] + 1, 1)
        if np.array_equal(updated, depths):
            return depths
        depths = updated
