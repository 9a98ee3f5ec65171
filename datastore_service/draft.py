"""The types every part of CREST passes around: the draft tree, and the batches of lookups and
answers that both indexes (CREST's and REST's) take and return.

A draft is parallel arrays, best node first: `tokens[i]` is drafted after the path to
`parents[i]` (-1 = directly after the context), with corpus probability `probabilities[i]` that
the path to node i follows the context. Parents precede children, so every prefix is a tree.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_BATCH = 4096
MAX_NODES_LIMIT = 4096
MAX_DEPTH_LIMIT = 1024
# The lookup answered when none is named: MERGED starts with the longest match's tree, so it drafts
# at least what longest match does at any node budget; SCORED drafted less than longest match on 61
# of the 63 stores of docs/RESULTS.md's sweep.
DEFAULT_SELECTION = "merged"


@dataclass(frozen=True)
class DraftTree:
    tokens: np.ndarray  # int32 [n]
    parents: np.ndarray  # int32 [n]; -1 = the context
    probabilities: np.ndarray  # float32 [n]
    context_length: int  # length of the matched stored context; 0 = no match
    score: float  # expected accepted draft tokens = probabilities.sum()

    @classmethod
    def empty(cls) -> DraftTree:
        return cls(np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32), 0, 0.0)

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> np.ndarray:
        """Depth of each node (1 = right after the context)."""
        depths: list[int] = []
        for parent in self.parents.tolist():  # parents precede children; plain ints: a decode step's host time
            depths.append(1 if parent < 0 else depths[parent] + 1)
        return np.array(depths, np.int32)

    def check_integrity(self) -> None:
        """Raise AssertionError unless the arrays form a valid, best-first, prefix-closed tree."""
        n = len(self)
        assert len(self.parents) == n and len(self.probabilities) == n, "arrays differ in length"
        assert np.all(self.parents < np.arange(n)), "a parent must precede its child"
        assert np.all(self.parents >= -1), "parent index below -1"
        # Zero is a probability: MERGED scales a shorter context's branches by the mass the longer
        # ones leave, none when their first tokens account for every continuation counted.
        assert np.all((self.probabilities >= 0) & (self.probabilities <= 1.0 + 1e-6)), "probability outside [0, 1]"
        with_parent = self.parents >= 0
        assert np.all(self.probabilities[with_parent] <= self.probabilities[self.parents[with_parent]] + 1e-6), (
            "a node is likelier than its parent"
        )
        siblings = set(zip(self.parents.tolist(), self.tokens.tolist()))
        assert len(siblings) == n, "two siblings draft the same token"
        assert n == 0 or self.context_length > 0, "nodes without a matched context"
        assert abs(float(self.probabilities.sum()) - self.score) <= 1e-3 * max(1.0, self.score), "score != sum"


class QueryError(ValueError):
    """A lookup request the store can't answer as asked (bad ids, lengths or limits)."""


@dataclass(frozen=True)
class DraftBatch:
    """One draft tree per query, as flat arrays: query i owns nodes offsets[i]:offsets[i+1]."""

    tokens: np.ndarray
    parents: np.ndarray
    probabilities: np.ndarray
    offsets: np.ndarray
    context_lengths: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.context_lengths)

    def tree(self, i: int) -> DraftTree:
        start, end = self.offsets[i], self.offsets[i + 1]
        return DraftTree(
            self.tokens[start:end],
            self.parents[start:end],
            self.probabilities[start:end],
            int(self.context_lengths[i]),
            float(self.scores[i]),
        )

    def trees(self) -> list[DraftTree]:
        return [self.tree(i) for i in range(len(self))]


def answer_buffers(capacity: int, queries: int) -> tuple[np.ndarray, ...]:
    """The empty arrays a compiled answer fills: tokens, parents and probabilities (room for
    `capacity` nodes), then offsets, context lengths and scores of `queries` queries."""
    return (
        np.empty(capacity, np.int32),
        np.empty(capacity, np.int32),
        np.empty(capacity, np.float32),
        np.empty(queries + 1, np.int64),
        np.empty(queries, np.int32),
        np.empty(queries, np.float32),
    )


def filled_answers(buffers: tuple[np.ndarray, ...], written: int) -> DraftBatch:
    """The DraftBatch in `answer_buffers` once `written` nodes are in them."""
    tokens, parents, probabilities, offsets, context_lengths, scores = buffers
    return DraftBatch(tokens[:written], parents[:written], probabilities[:written], offsets, context_lengths, scores)


@dataclass(frozen=True)
class QueryBatch:
    """Queries right-aligned in a matrix, with per-query limits (already validated)."""

    tails: np.ndarray  # int64 [B, N], -1 padded on the left
    lengths: np.ndarray  # int64 [B]
    max_nodes: np.ndarray  # int64 [B], > 0
    max_depth: np.ndarray  # int64 [B], > 0


def prepare_queries(
    sequences: Sequence[Sequence[int]],
    max_nodes: Sequence[int] | int,
    max_depth: Sequence[int] | int,
    width: int,
    vocab_size: int,
    default_nodes: int,
) -> QueryBatch:
    """Validate a batch of queries against an index's limits (QueryError says which and why)."""
    count = len(sequences)
    if count == 0:
        raise QueryError("empty batch: send at least one sequence")
    if count > MAX_BATCH:
        raise QueryError(f"batch of {count} sequences exceeds the limit of {MAX_BATCH}")
    lengths = np.fromiter(map(len, sequences), np.int64, count)
    if (lengths == 0).any():
        raise QueryError(f"sequence {int(np.argmax(lengths == 0))}: no tokens")
    if (lengths > width).any():
        row = int(np.argmax(lengths > width))
        raise QueryError(
            f"sequence {row}: {lengths[row]} tokens; this store matches at most {width} (send the last ones)"
        )
    flat = np.fromiter(itertools.chain.from_iterable(sequences), np.int64, int(lengths.sum()))
    bad = (flat < 0) | (flat >= vocab_size)
    if bad.any():
        position = int(np.argmax(bad))
        row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
        raise QueryError(f"sequence {row}: token id {flat[position]} is outside the vocabulary [0, {vocab_size})")
    tails = right_aligned(flat, lengths, width)
    nodes = _limits(max_nodes, count, "max_nodes", MAX_NODES_LIMIT, default=default_nodes)
    depth = _limits(max_depth, count, "max_depth", MAX_DEPTH_LIMIT, default=MAX_DEPTH_LIMIT)
    return QueryBatch(tails, lengths, nodes, depth)


def right_aligned(flat: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Rows of `lengths[i]` tokens taken in turn from `flat`, right-aligned in a -1 padded matrix."""
    matrix = np.full((len(lengths), width), -1, np.int64)
    ends = np.cumsum(lengths)
    position_in_row = np.arange(len(flat)) - np.repeat(ends - lengths, lengths)
    matrix[np.repeat(np.arange(len(lengths)), lengths), np.repeat(width - lengths, lengths) + position_in_row] = flat
    return matrix


def _limits(values: Sequence[int] | int, count: int, name: str, limit: int, default: int) -> np.ndarray:
    array = np.full(count, values, np.int64) if np.isscalar(values) else np.asarray(values, np.int64)
    if array.shape != (count,):
        raise QueryError(f"{name}: expected {count} values, got {array.shape}")
    if (array < 0).any() or (array > limit).any():
        row = int(np.argmax((array < 0) | (array > limit)))
        raise QueryError(f"sequence {row}: {name} {array[row]} outside [0, {limit}] (0 = default)")
    return np.where(array == 0, default, array)
