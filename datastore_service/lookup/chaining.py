"""CHAINED selection: a MERGED answer, grown at its likeliest nodes by further lookups.

A stored tree ends where its context's counts end (its depth, its top-c nodes), and a query's
merged tree often has room left within `max_nodes`; many steps that accept a drafted token end at
a leaf, where the next token was never drafted. The store
itself knows what usually follows a node: the tree of the context formed by the query's tokens and
the path to the node. Chaining looks it up and grafts it under the node by MERGED's own rule, as if
that context were one more, shorter, matching context there:

- the branches whose first token the node already drafts are left out, and the others' probabilities
  are scaled by the node's probability times the mass its children leave (one less their share of
  it): a leaf keeps all of it (the chain rule of an n-gram model); a node whose children the longer
  context drafted passes on only what they leave;
- the merged answer comes first, whole and in its order, so a chained tree drafts at least what
  the merged tree does at every node budget (the same guarantee MERGED gives over longest match);
- each round, every query with room looks up its `NODES_PER_ROUND` likeliest nodes not yet grown
  (one batched lookup for all queries), each for at most `NODES_PER_GRAFT` nodes within the depth
  still allowed;
- after the rounds, the grown nodes fill the room, the likeliest first (a grown node is never
  likelier than its parent, so every kept node's parent is kept).

It costs no bytes, only lookups: `ROUNDS` more batched lookups per request. Replayed on every
HumanEval and MT-Bench prompt (`python benchmarks/replay_stores.py`; docs/BENCHMARKS.md, "Chained
lookups and tree shapes") it lifts the accepted length most where trees are small.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from datastore_service.draft import DraftBatch, QueryBatch, right_aligned

# Replayed on MT-Bench stores, 3 rounds of 6 nodes drafted within 0.004 tokens a step of 4 rounds
# of 12, for fewer lookups.
ROUNDS = 3
NODES_PER_ROUND = 6
NODES_PER_GRAFT = 8

Answer = Callable[[QueryBatch], DraftBatch]


class _GrowingTree:
    """One query's tree as lists: the merged answer first, grown nodes after it."""

    def __init__(self, answer: DraftBatch, query: int, tokens: list[int], max_nodes: int, max_depth: int) -> None:
        start, end = int(answer.offsets[query]), int(answer.offsets[query + 1])
        self.query_tokens = tokens
        self.tokens = answer.tokens[start:end].tolist()
        self.parents = answer.parents[start:end].tolist()
        self.probabilities = answer.probabilities[start:end].astype(np.float64).tolist()
        self.depths = [1 if p < 0 else 0 for p in self.parents]
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                self.depths[i] = self.depths[parent] + 1
        self.answered = len(self.tokens)
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.grown: set[int] = set()

    @property
    def has_room(self) -> bool:
        return self.answered < self.max_nodes

    def nodes_to_grow(self, count: int) -> list[int]:
        """The likeliest nodes not yet grown and above the depth limit."""
        nodes = [i for i in range(len(self.tokens)) if i not in self.grown and self.depths[i] < self.max_depth]
        nodes.sort(key=lambda i: (-self.probabilities[i], i))
        return nodes[:count]

    def path(self, node: int) -> list[int]:
        tokens = []
        while node >= 0:
            tokens.append(self.tokens[node])
            node = self.parents[node]
        return tokens[::-1]

    def graft(self, node: int, subtree: DraftBatch, row: int) -> None:
        """Row `row` of `subtree` (the tree of `node`'s own context) under `node`: the branches whose
        first token `node` does not draft yet, scaled by the mass its children leave."""
        children = [i for i, parent in enumerate(self.parents) if parent == node]
        drafted = {self.tokens[i] for i in children}
        left = 1.0 - sum(self.probabilities[i] for i in children) / max(self.probabilities[node], 1e-30)
        scale = self.probabilities[node] * min(max(left, 0.0), 1.0)
        start, end = int(subtree.offsets[row]), int(subtree.offsets[row + 1])
        placed: dict[int, int] = {}  # the subtree's node -> its index here
        for index, (token, parent, probability) in enumerate(
            zip(
                subtree.tokens[start:end].tolist(),
                subtree.parents[start:end].tolist(),
                subtree.probabilities[start:end].tolist(),
            )
        ):
            if parent < 0 and token not in drafted:
                attached = node
            elif parent in placed:
                attached = placed[parent]
            else:
                continue  # in a branch the node already drafts
            placed[index] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(attached)
            self.probabilities.append(scale * probability)
            self.depths.append(self.depths[attached] + 1)

    def kept(self) -> list[int]:
        """The answer's nodes, then the grown ones by probability, within max_nodes."""
        grown = sorted(range(self.answered, len(self.tokens)), key=lambda i: (-self.probabilities[i], i))
        return list(range(self.answered)) + grown[: max(self.max_nodes - self.answered, 0)]


def chain_trees(answer: Answer, batch: QueryBatch, width: int) -> DraftBatch:
    """The CHAINED answer to `batch`: `answer` (a MERGED lookup) grown by up to ROUNDS lookups."""
    first = answer(batch)
    trees = [
        _GrowingTree(first, q, [int(t) for t in batch.tails[q] if t >= 0], int(n), int(d))
        for q, (n, d) in enumerate(zip(batch.max_nodes, batch.max_depth))
    ]
    for _ in range(ROUNDS):
        requests = [(tree, node) for tree in trees if tree.has_room for node in tree.nodes_to_grow(NODES_PER_ROUND)]
        if not requests:
            break
        for tree, node in requests:
            tree.grown.add(node)  # asked once, whatever the store answers
        contexts = [(tree.query_tokens + tree.path(node))[-width:] for tree, node in requests]
        lengths = np.fromiter(map(len, contexts), np.int64, len(contexts))
        flat = np.fromiter((t for c in contexts for t in c), np.int64, int(lengths.sum()))
        depth_left = np.array([tree.max_depth - tree.depths[node] for tree, node in requests], np.int64)
        subtrees = answer(
            QueryBatch(
                right_aligned(flat, lengths, width), lengths, np.full(len(requests), NODES_PER_GRAFT), depth_left
            )
        )
        for row, (tree, node) in enumerate(requests):
            tree.graft(node, subtrees, row)
    return _flattened(trees, first)


def _flattened(trees: list[_GrowingTree], first: DraftBatch) -> DraftBatch:
    tokens, parents, probabilities, sizes = [], [], [], []
    for tree in trees:
        kept = tree.kept()
        position = {node: i for i, node in enumerate(kept)}
        tokens.extend(tree.tokens[i] for i in kept)
        parents.extend(-1 if tree.parents[i] < 0 else position[tree.parents[i]] for i in kept)
        probabilities.extend(tree.probabilities[i] for i in kept)
        sizes.append(len(kept))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    probabilities_32 = np.asarray(probabilities, np.float32)
    owner = np.repeat(np.arange(len(trees)), sizes)
    return DraftBatch(
        np.asarray(tokens, np.int32),
        np.asarray(parents, np.int32),
        probabilities_32,
        offsets,
        first.context_lengths.copy(),
        np.bincount(owner, weights=probabilities_32, minlength=len(trees)).astype(np.float32),
    )
