"""The CREST index: a store version's serving file, mapped, answering lookups.

Loading maps `<version>.serving` beside the version's DuckDB file (store/serving_arrays.py says
what it holds, store/serving_file.py how it is laid out; serving_loader.py checks that it was
derived from exactly that DuckDB file and rebuilds it when missing or damaged). No array is built
or copied at load, so loading takes milliseconds and a few MB of private memory, and every replica
that serves the version shares the file's pages in the page cache.

Three paths give the same answers, bit for bit:
- where the install built it, one compiled call for the whole batch (store_answer.c, through
  compiled_lookup.py; CHAINED grows its MERGED answers);
- otherwise, up to SMALL_BATCH sequences: small_batch.py, plain Python over memoryviews (microseconds);
- and larger batches: vectorised numpy (below). It hashes every suffix (lengths 1..N) of every query at
  once, finds candidates with one `searchsorted` over the sorted context hashes, verifies them
  token by token (so matches are exact whatever the hash does), picks one tree per query, and
  gathers the first `max_nodes` nodes of each chosen tree.

Example: a store with contexts `[12]` and `[7, 12]`; the query `[5, 7, 12]` matches both suffixes
`[12]` and `[7, 12]`. LONGEST_MATCH answers with the tree of `[7, 12]`; SCORED answers with
whichever tree expects more accepted tokens within the query's `max_nodes` (the longer on a tie):
the running count of its first `max_nodes` nodes over the context's count. MERGED answers with
both trees combined (tree_merge.py): `[7, 12]`'s, then `[12]`'s branches that `[7, 12]` lacks.
CHAINED answers with the merged tree grown at its likeliest leaves by more lookups (chaining.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datastore_service.draft import (
    DEFAULT_SELECTION,
    MAX_DEPTH_LIMIT,
    MAX_NODES_LIMIT,
    DraftBatch,
    DraftTree,
    QueryBatch,
    QueryError,
    prepare_queries,
)
from datastore_service.lookup.chaining import chain_trees
from datastore_service.lookup.compiled_lookup import CompiledLookup, kernel
from datastore_service.lookup.serving_loader import open_serving_file
from datastore_service.lookup.small_batch import SMALL_BATCH, SmallBatchLookup
from datastore_service.lookup.tree_merge import merge_trees
from datastore_service.store.context_hash import suffix_hashes
from datastore_service.store.info import StoreInfo
from datastore_service.store.reader import resolve_store
from datastore_service.store.serving_arrays import concatenated_ranges, depths_within
from datastore_service.store.serving_file import ServingFile

SELECTIONS = ("scored", "longest", "merged", "chained")
# Batches up to this many sequences are validated in plain Python (small_batch.py) before the compiled
# lookup: measured 7 µs against numpy's 22 µs for 8 sequences, 18 against 25 for 32, 32 against 28 for 64.
QUICK_PREPARE = 32


class DraftIndex:
    def __init__(self, info: StoreInfo, path: Path, serving: ServingFile) -> None:
        self.info, self.path, self.serving_file = info, path, serving.origin
        metadata, arrays = serving.metadata, serving.arrays
        self.width, self.hash_seed = int(metadata["width"]), int(metadata["hash_seed"])
        self.max_tree_depth = int(metadata["max_tree_depth"])
        # Views of the mapping (store/serving_arrays.py documents each).
        self.context_hashes = arrays["context_hashes"]
        self.context_matrix = arrays["context_tokens"]
        self.context_lengths = arrays["context_lengths"]
        self.context_counts = arrays["context_counts"]
        self.tree_offsets = arrays["tree_offsets"]
        self.node_tokens = arrays["node_tokens"]
        self.node_parents = arrays["node_parents"]
        self.node_cumulative = arrays["node_cumulative"]
        self.small = SmallBatchLookup(arrays, metadata, self._default_nodes, info.vocab_size)
        self.compiled = (
            CompiledLookup(arrays, self.width, self.hash_seed, self.max_tree_depth) if kernel() is not None else None
        )
        # Per suffix length n (rows) and position (columns): outside the query's last n tokens.
        self._suffix_lengths = np.arange(1, self.width + 1)[None, :]  # [1, N]
        self._outside_suffix = np.arange(self.width)[None, None, :] < (self.width - self._suffix_lengths)[:, :, None]

    @classmethod
    def load(cls, path: Path) -> DraftIndex:
        """Open a published store's current version: its serving file mapped, checked against the
        DuckDB file's bytes (rebuilt from them if it must be)."""
        resolved = resolve_store(path)
        info, serving = open_serving_file(resolved)
        return cls(info, resolved, serving)

    @property
    def _default_nodes(self) -> int:
        return max(self.info.max_nodes, 1)

    # -- queries ------------------------------------------------------------------------------

    def prepare(
        self, sequences: Sequence[Sequence[int]], max_nodes: Sequence[int] | int = 0, max_depth: Sequence[int] | int = 0
    ) -> QueryBatch:
        """Validate queries (QueryError says which and why) and lay them out for `lookup_batch`."""
        most = QUICK_PREPARE if self.compiled is not None else SMALL_BATCH
        if len(sequences) <= most:
            batch = self.small.prepare(sequences, max_nodes, max_depth, most)
            if batch is not None:
                return batch
        return prepare_queries(
            sequences, max_nodes, max_depth, self.width, self.info.vocab_size, default_nodes=self._default_nodes
        )

    def lookup(
        self,
        sequences: Sequence[Sequence[int]],
        max_nodes: Sequence[int] | int = 0,
        max_depth: Sequence[int] | int = 0,
        selection: str = DEFAULT_SELECTION,
    ) -> DraftBatch:
        _check_selection(selection)
        if self.compiled is None and len(sequences) <= SMALL_BATCH and selection != "chained":
            answer = self.small.lookup(sequences, max_nodes, max_depth, selection)
            if answer is not None:
                return answer
        return self.lookup_batch(self.prepare(sequences, max_nodes, max_depth), selection)

    def lookup_trees(
        self, sequences: Sequence[Sequence[int]], max_nodes: int = 0, selection: str = DEFAULT_SELECTION
    ) -> list[DraftTree]:
        """`lookup(...).trees()`; one sequence of plain ints goes straight to the compiled lookup (a
        decode step's lookup, where every avoided array and object counts)."""
        _check_selection(selection)
        if self.compiled is not None and len(sequences) == 1 and selection != "chained":
            nodes = max_nodes or self._default_nodes
            if type(nodes) is int and 0 < nodes <= MAX_NODES_LIMIT:
                sequence = sequences[0] if type(sequences[0]) is list else list(sequences[0])
                tree = self.compiled.tree(sequence, nodes, MAX_DEPTH_LIMIT, selection, self.info.vocab_size)
                if tree is not None:
                    return [tree]
        return self.lookup(sequences, max_nodes, selection=selection).trees()

    def lookup_batch(self, batch: QueryBatch, selection: str = DEFAULT_SELECTION) -> DraftBatch:
        _check_selection(selection)
        if selection == "chained":
            return chain_trees(lambda queries: self.lookup_batch(queries, "merged"), batch, self.width)
        if self.compiled is not None:
            return self.compiled.answers(batch, selection)
        if len(batch.lengths) <= SMALL_BATCH:
            return self.small.lookup_batch(batch, selection)
        return self.lookup_vectorised(batch, selection)

    def lookup_vectorised(self, batch: QueryBatch, selection: str = DEFAULT_SELECTION) -> DraftBatch:
        """The numpy path, whatever the batch size (`lookup_batch` takes it above SMALL_BATCH)."""
        _check_selection(selection)
        if selection == "chained":
            return chain_trees(lambda queries: self.lookup_vectorised(queries, "merged"), batch, self.width)
        if selection == "merged":
            return self._merged(batch)
        trees, lengths = self._choose(batch, selection)
        return self._gather(trees, lengths, batch)

    def _merged(self, batch: QueryBatch) -> DraftBatch:
        """Every matched context's tree (up to max_nodes, within max_depth), merged per query."""
        matched, where = self._matches(batch)
        query, column = np.nonzero(matched[:, ::-1])  # per query, the longest context first
        column = self.width - 1 - column
        # Shorter contexts only where the longest tree may leave room (fewer nodes than max_nodes,
        # or some cut by max_depth): elsewhere the answer is the longest tree's first max_nodes.
        longest = np.ones(len(query), bool)
        longest[1:] = query[1:] != query[:-1]
        tree = where[query, column]
        size = self.tree_offsets[tree + 1] - self.tree_offsets[tree]
        room = (size < batch.max_nodes[query]) | (batch.max_depth[query] < self.max_tree_depth)
        wanted = np.zeros(len(batch.lengths), bool)
        wanted[query[longest & room]] = True
        gathered = longest | wanted[query]
        query, column = query[gathered], column[gathered]
        pairs = QueryBatch(batch.tails[query], batch.lengths[query], batch.max_nodes[query], batch.max_depth[query])
        per_context = self._gather(where[query, column], column + 1, pairs)
        return merge_trees(per_context, query, len(batch.lengths), batch.max_nodes)

    def _matches(self, batch: QueryBatch) -> tuple[np.ndarray, np.ndarray]:
        """[B, N]: whether the query's last n+1 tokens are a stored context, and which (its row)."""
        suffix_length = self._suffix_lengths
        hashes = suffix_hashes(batch.tails, self.hash_seed)  # [B, N]
        where = np.minimum(np.searchsorted(self.context_hashes, hashes), len(self.context_hashes) - 1)
        matched = (self.context_hashes[where] == hashes) & (self.context_lengths[where] == suffix_length)
        matched &= suffix_length <= batch.lengths[:, None]
        # Exact check: the stored context equals the query's suffix of that length, token by token
        # (in the stored token type: valid ids fit it, and the -1 padding lies outside every suffix).
        tails = batch.tails.astype(self.context_matrix.dtype)
        same = (self.context_matrix.take(where, axis=0) == tails[:, None, :]) | self._outside_suffix
        matched &= same.all(axis=2)
        return matched, where

    def _choose(self, batch: QueryBatch, selection: str) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the chosen tree (-1 = none) and the matched context length (0 = none)."""
        width, suffix_length = self.width, self._suffix_lengths
        matched, where = self._matches(batch)
        if selection == "longest":
            value = np.where(matched, suffix_length, 0).astype(np.float64)
        else:
            starts = self.tree_offsets[where]
            kept = np.minimum(batch.max_nodes[:, None], self.tree_offsets[where + 1] - starts)
            expected = self.node_cumulative[starts + kept - 1] / self.context_counts[where]
            value = np.where(matched, expected, -1.0)
        # Highest value wins; among equals the longest context (scan from the longest down).
        best = width - 1 - np.argmax(value[:, ::-1], axis=1)
        rows = np.arange(len(best))
        found = matched[rows, best]
        return np.where(found, where[rows, best], -1), np.where(found, best + 1, 0)

    def _gather(self, trees: np.ndarray, context_lengths: np.ndarray, batch: QueryBatch) -> DraftBatch:
        found = trees >= 0
        safe = np.where(found, trees, 0)
        starts = self.tree_offsets[safe].astype(np.int64)
        take = np.where(found, np.minimum(batch.max_nodes, self.tree_offsets[safe + 1] - starts), 0)
        nodes = concatenated_ranges(starts, take)
        query_of_node = np.repeat(np.arange(len(trees)), take)
        first = np.cumsum(take) - take  # each query's first node in `nodes`
        # A node's count is its running count less the previous node's (the same tree's, since
        # each query's nodes are a prefix of its tree), except for a tree's first node.
        # (Unsigned: a difference across two trees wraps, and is overwritten with the first node's.)
        running = self.node_cumulative[nodes]
        counts = np.empty_like(running)
        np.subtract(running[1:], running[:-1], out=counts[1:])
        counts[first[take > 0]] = running[first[take > 0]]
        probabilities = (counts / np.repeat(self.context_counts[safe], take)).astype(np.float32)
        local_parents = self.node_parents[nodes].astype(np.int32)
        tokens = self.node_tokens[nodes]
        if (batch.max_depth < self.max_tree_depth).any():
            depths = depths_within(local_parents, first[query_of_node])
            keep = depths <= batch.max_depth[query_of_node]
            if not keep.all():
                # Dropping deep nodes shifts indices: renumber the kept nodes' parents.
                new_index = np.cumsum(keep) - 1
                has_parent = local_parents >= 0
                parent_flat = first[query_of_node] + np.where(has_parent, local_parents, 0)
                new_first = new_index[first[query_of_node]] + ~keep[first[query_of_node]]
                local_parents = np.where(has_parent, new_index[parent_flat] - new_first, -1)[keep]
                query_of_node, probabilities, tokens = query_of_node[keep], probabilities[keep], tokens[keep]
        sizes = np.bincount(query_of_node, minlength=len(trees))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        scores = np.bincount(query_of_node, weights=probabilities, minlength=len(trees)).astype(np.float32)
        return DraftBatch(
            tokens.astype(np.int32),
            local_parents.astype(np.int32),
            probabilities,
            offsets,
            np.where(sizes > 0, context_lengths, 0).astype(np.int32),
            scores,
        )


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise QueryError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
