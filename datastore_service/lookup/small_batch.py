"""Lookups of a few sequences (up to SMALL_BATCH) in plain Python over memoryviews of the mapped
serving arrays: a few microseconds a sequence, where the vectorised path pays the fixed overhead of
some fifty numpy calls whatever the batch size.

Per sequence: hash its suffixes newest token first (context_hash.suffix_hashes_of, inlined),
binary-search each hash among the sorted context hashes (bisect on a memoryview: C, no objects per
context), verify the candidate's tokens, keep the best (highest expected accepted tokens within
max_nodes, or longest; ties to the longer context), then slice the tree's first max_nodes nodes;
or, for MERGED, join the matched contexts' trees as tree_merge.py does.
The answers equal the vectorised path's bit for bit: the same integer ratios, the same float32
roundings, the same left-to-right float64 sums (tests/datastore_service/lookup/test_small_batch.py).

Why not numba: measured here, importing it costs 0.2-0.36 s and 64 MB, and loading even cached
compiled code another 0.26 s and 52 MB per process, more than the whole load and memory budget.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

from datastore_service.draft import MAX_DEPTH_LIMIT, MAX_NODES_LIMIT, DraftBatch, QueryBatch
from datastore_service.store.context_hash import HASH_MULTIPLIER

# Where the paths cross: measured (CPU time, 32-node trees of the stdlib store) one sequence 18 µs
# here against 66 µs vectorised, 6 sequences 67 against 76, 8 sequences 89 against 78.
SMALL_BATCH = 6
_MASK = (1 << 64) - 1


class SmallBatchLookup:
    """The small-batch path over one serving file's arrays (views: nothing is copied)."""

    def __init__(self, arrays: dict[str, np.ndarray], metadata: dict, default_nodes: int, vocab_size: int) -> None:
        self.hashes = memoryview(arrays["context_hashes"])
        self.contexts = memoryview(arrays["context_tokens"].reshape(-1))
        self.lengths = memoryview(arrays["context_lengths"])
        self.counts = memoryview(arrays["context_counts"])
        self.offsets = memoryview(arrays["tree_offsets"])
        self.parents = memoryview(arrays["node_parents"])
        self.cumulative = memoryview(arrays["node_cumulative"])
        # Trees' tokens and parents are sliced as numpy views of the same arrays.
        self.node_tokens, self.node_parents = arrays["node_tokens"], arrays["node_parents"]
        self.width, self.seed = int(metadata["width"]), int(metadata["hash_seed"])
        self.max_tree_depth = int(metadata["max_tree_depth"])
        self.default_nodes, self.vocab_size = default_nodes, vocab_size

    def lookup(
        self, sequences: Sequence[Sequence[int]], max_nodes: object, max_depth: object, selection: str
    ) -> DraftBatch | None:
        """Answer straight from Python lists of ints; None when the input needs the full validation."""
        checked = self.checked(sequences, max_nodes, max_depth)
        return None if checked is None else self._answer(*checked, selection)

    def prepare(
        self, sequences: Sequence[Sequence[int]], max_nodes: object, max_depth: object, most: int = SMALL_BATCH
    ) -> QueryBatch | None:
        """The QueryBatch `prepare_queries` would make, in a few microseconds; None as for `checked`."""
        checked = self.checked(sequences, max_nodes, max_depth, most)
        if checked is None:
            return None
        rows, nodes, depths = checked
        tails = np.full((len(rows), self.width), -1, np.int64)
        for tail, row in zip(tails, rows):
            tail[self.width - len(row) :] = row
        lengths = np.array([len(row) for row in rows], np.int64)
        return QueryBatch(tails, lengths, np.array(nodes, np.int64), np.array(depths, np.int64))

    def checked(
        self, sequences: Sequence[Sequence[int]], max_nodes: object, max_depth: object, most: int = SMALL_BATCH
    ) -> tuple[list[list[int]], list[int], list[int]] | None:
        """Rows of Python ints and per-row limits (defaults filled in) when every part is plainly
        valid and there are at most `most`; None for anything unusual or wrong, or more rows, which
        `prepare_queries` then handles (and names)."""
        count = len(sequences)
        if not 0 < count <= most:
            return None
        nodes = _limits(max_nodes, count, MAX_NODES_LIMIT, self.default_nodes)
        depths = _limits(max_depth, count, MAX_DEPTH_LIMIT, MAX_DEPTH_LIMIT)
        if nodes is None or depths is None:
            return None
        width, vocab_size = self.width, self.vocab_size
        rows = []
        for sequence in sequences:
            if type(sequence) is not list:
                sequence = list(sequence)
            if not 0 < len(sequence) <= width:
                return None
            for token in sequence:
                if type(token) is not int or not 0 <= token < vocab_size:
                    return None
            rows.append(sequence)
        return rows, nodes, depths

    def lookup_batch(self, batch: QueryBatch, selection: str) -> DraftBatch:
        width = self.width
        rows = [row[width - length :] for row, length in zip(batch.tails.tolist(), batch.lengths.tolist())]
        return self._answer(rows, batch.max_nodes.tolist(), batch.max_depth.tolist(), selection)

    def _answer(self, rows: list[list[int]], max_nodes: list[int], max_depth: list[int], selection: str) -> DraftBatch:
        trees: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        sizes, context_lengths, scores = [0], [], []
        for row, nodes, depth in zip(rows, max_nodes, max_depth):
            if selection == "merged":
                tree, length = self._merged(row, nodes, depth)
            else:
                chosen, length = self._choose(row, nodes, selection == "longest")
                tree = self._nodes(chosen, nodes, depth) if chosen >= 0 else None
            score = 0.0
            if tree is not None:
                trees.append(tree)
                for probability in tree[2].tolist():  # left to right in float64, as np.bincount adds
                    score += probability
            sizes.append(sizes[-1] + (len(tree[0]) if tree is not None else 0))
            context_lengths.append(length if tree is not None and len(tree[0]) else 0)
            scores.append(score)
        return DraftBatch(
            _joined([tree[0] for tree in trees], np.int32),
            _joined([tree[1] for tree in trees], np.int32),
            _joined([tree[2] for tree in trees], np.float32),
            np.array(sizes, np.int64),
            np.array(context_lengths, np.int32),
            np.array(scores, np.float32),
        )

    def _merged(
        self, row: list[int], max_nodes: int, max_depth: int
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, int]:
        """The MERGED answer (tree_merge.py says the rule) and the longest matched length: the
        longest context's nodes, then each shorter one's branches for first tokens not yet drafted,
        scaled by the residual mass, up to max_nodes in all."""
        matches = self._matches(row)
        if not matches:
            return None, 0
        longest, *shorter = reversed(matches)
        whole = self._nodes(longest[0], max_nodes, max_depth)
        if not shorter or len(whole[0]) >= max_nodes:
            return whole, longest[1]  # the longest context's answer, as it is
        tokens, parents = whole[0].tolist(), whole[1].tolist()
        probabilities = whole[2].tolist()
        covered = {token for token, parent in zip(tokens, parents) if parent < 0}
        contributed = 0.0
        for probability, parent in zip(probabilities, parents):
            contributed += probability if parent < 0 else 0.0
        residual = min(max(1.0 - contributed, 0.0), 1.0)
        for found, _ in shorter:
            if len(tokens) >= max_nodes:
                break
            node_tokens, node_parents, node_probabilities = (
                a.tolist() for a in self._nodes(found, max_nodes, max_depth)
            )
            branch: list[int] = []  # each node's first-level token
            moved: list[int] = []  # each node's index in the merged tree (-1: dropped)
            contributed = 0.0
            for token, parent, probability in zip(node_tokens, node_parents, node_probabilities):
                first = token if parent < 0 else branch[parent]
                branch.append(first)
                if first in covered:
                    moved.append(-1)
                    continue
                if parent < 0:
                    contributed += probability  # the branch's mass, kept or cut by max_nodes
                if len(tokens) >= max_nodes:
                    moved.append(-1)
                    continue
                moved.append(len(tokens))
                tokens.append(token)
                parents.append(-1 if parent < 0 else moved[parent])
                probabilities.append(probability * residual)
            covered.update(token for token, parent in zip(node_tokens, node_parents) if parent < 0)
            residual *= min(max(1.0 - contributed, 0.0), 1.0)
        merged = (np.array(tokens, np.int32), np.array(parents, np.int32), np.array(probabilities, np.float32))
        return merged, longest[1]

    def _choose(self, row: list[int], max_nodes: int, longest: bool) -> tuple[int, int]:
        """The chosen tree (-1 = none) and the matched context's length (0 = none)."""
        offsets = self.offsets
        best, best_length, best_value = -1, 0, -1.0
        for found, length in self._matches(row):
            if longest:
                value = float(length)
            else:
                start = offsets[found]
                kept = min(max_nodes, offsets[found + 1] - start)
                value = self.cumulative[start + kept - 1] / self.counts[found]
            if value >= best_value:  # shortest first, so ties go to the longer context
                best, best_length, best_value = found, length, value
        return best, best_length

    def _matches(self, row: list[int]) -> list[tuple[int, int]]:
        """The stored contexts the row ends with, shortest first: (context row, length)."""
        hashes, lengths, contexts = self.hashes, self.lengths, self.contexts
        width, contexts_total = self.width, len(hashes)
        matches = []
        state, length = self.seed, 0
        for token in reversed(row):
            length += 1
            state = ((state ^ (token + 1)) * HASH_MULTIPLIER) & _MASK
            state ^= state >> 31
            found = bisect_left(hashes, state)
            if found == contexts_total or hashes[found] != state or lengths[found] != length:
                continue
            end = found * width + width
            if contexts[end - length : end].tolist() == row[-length:]:
                matches.append((found, length))
        return matches

    def _nodes(self, tree: int, max_nodes: int, max_depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tree's first max_nodes nodes less those deeper than max_depth: tokens, parents
        (renumbered among the kept nodes) and probabilities (count ratios, as float32)."""
        start = self.offsets[tree]
        end = start + min(max_nodes, self.offsets[tree + 1] - start)
        count, running = self.counts[tree], self.cumulative[start:end].tolist()
        ratios = [(now - before) / count for before, now in zip([0, *running], running)]
        probabilities = np.array(ratios, np.float32)
        tokens = self.node_tokens[start:end].astype(np.int32)
        if max_depth >= self.max_tree_depth:
            return tokens, self.node_parents[start:end].astype(np.int32), probabilities
        keep, parents = _within_depth(self.parents[start:end].tolist(), max_depth)
        return tokens[keep], np.array(parents, np.int32), probabilities[keep]


def _within_depth(parents: list[int], max_depth: int) -> tuple[list[bool], list[int]]:
    """Which nodes lie within max_depth, and the kept nodes' parents renumbered among them (a kept
    node's parent is shallower, so kept too)."""
    depths: list[int] = []
    kept_index: list[int] = []  # each node's index among the kept nodes (-1 = dropped)
    keep: list[bool] = []
    renumbered: list[int] = []
    for parent in parents:
        depth = 1 if parent < 0 else depths[parent] + 1
        depths.append(depth)
        keep.append(depth <= max_depth)
        if depth <= max_depth:
            kept_index.append(len(renumbered))
            renumbered.append(-1 if parent < 0 else kept_index[parent])
        else:
            kept_index.append(-1)
    return keep, renumbered


def _joined(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype)


def _limits(values: object, count: int, limit: int, default: int) -> list[int] | None:
    """One limit per row from an int or `count` ints (0 = default); None unless all in [0, limit]."""
    if type(values) is int:
        values = [values] * count
    elif isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.shape == (count,):
        values = values.tolist()
    elif isinstance(values, (list, tuple)) and len(values) == count:
        values = list(values)
    else:
        return None
    for value in values:
        if type(value) is not int or not 0 <= value <= limit:
            return None
    return [value or default for value in values]
