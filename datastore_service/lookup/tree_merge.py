"""MERGED selection: one draft tree per query from the trees of every stored context it ends with.

A store keeps, per context, its most common continuations; a query usually ends with several
stored contexts (its last 1, 2, ... N tokens). The longest knows the situation best, but its tree
is small; the shorter ones know other continuations. Merging keeps what each knows best:

- the longest context's tree comes first, whole and in its order;
- then each shorter context, longest first, adds the branches whose first token no longer context
  drafts, in its tree's order;
- the first `max_nodes` nodes are kept. So the answer starts with exactly the longest match's
  answer, and only a budget the longest tree cannot fill takes nodes from shorter contexts: at any
  node budget, a merged tree accepts at least what the longest match's does.

An added node's probability is its own context's, scaled by the mass the longer contexts leave to
continuations they do not draft (the residual: the product, over the longer contexts, of one less
the first-level probabilities they contributed), a back-off estimate of how likely the next token
falls outside them; the decoder's node budget and calibration read these probabilities.

Example: the query ends with contexts `[7, 12]` (tree: `(` 0.6, `(`->`x` 0.3) and `[12]` (tree: `(`
0.5, `.` 0.3, `.`->`a` 0.2). The merged tree is `(` 0.6, `(`->`x` 0.3, `.` 0.3 x 0.4 = 0.12,
`.`->`a` 0.08: the branch under `(` comes from `[7, 12]` alone.

Replayed on all HumanEval prompts against the default stdlib store (`python
benchmarks/replay_stores.py --suite humaneval STORE --max-nodes N`), accepted tokens per step with
SCORED / longest match / MERGED: 1.356 / 1.371 / 1.371 at 4 nodes, 1.622 / 1.629 / 1.681 at 64.
Why the longest context's nodes go first rather than every node by its probability (tried, and it
lost to longest match at small budgets), and why SCORED loses: a shorter context's probabilities,
counted over every situation it occurs in, overrate its continuations in the particular situation
the longer context describes.

Every kept node's parent is kept: it is in the same branch of the same context's tree, which lists
parents before children.
"""

from __future__ import annotations

import numpy as np

from datastore_service.draft import DraftBatch


def merge_trees(per_context: DraftBatch, owner: np.ndarray, queries: int, max_nodes: np.ndarray) -> DraftBatch:
    """Merge `per_context` (one tree per matched (query, context) pair, grouped by query, longest
    context first; `owner[j]` = the query of pair j) into one tree per query, at most
    `max_nodes[q]` nodes each."""
    pairs = len(owner)
    sizes = np.diff(per_context.offsets)
    pair_of_node = np.repeat(np.arange(pairs), sizes)
    first_of_pair = per_context.offsets[:-1]
    parents = per_context.parents.astype(np.int64)
    has_parent = parents >= 0
    parent_flat = first_of_pair[pair_of_node] + np.where(has_parent, parents, 0)
    branch = _branch_roots(parent_flat, has_parent)
    query_of_node = owner[pair_of_node]
    first_pair_of_query = np.searchsorted(owner, np.arange(queries))
    rank = np.arange(pairs) - first_pair_of_query[owner]  # 0 = the query's longest context

    # A branch is kept unless a longer context of the same query drafts its first token.
    # Nodes lie by query, longest context first: a (query, token) key's first root is the longest's.
    roots = np.flatnonzero(~has_parent)
    root_keys = query_of_node[roots] * np.int64(2**31) + per_context.tokens[roots]
    _, first_with_key = np.unique(root_keys, return_index=True)
    root_kept = np.zeros(len(per_context.tokens), bool)
    root_kept[roots[first_with_key]] = True
    kept = root_kept[branch]

    # Residual mass per pair: what its longer contexts left to the branches they do not draft.
    contributed = np.bincount(
        pair_of_node[roots], weights=np.where(root_kept[roots], per_context.probabilities[roots], 0.0), minlength=pairs
    )
    leaves = np.clip(1.0 - contributed, 0.0, 1.0)
    residual = np.ones(pairs)
    for step in range(1, int(rank.max(initial=0)) + 1):
        later = np.flatnonzero(rank == step)
        residual[later] = residual[later - 1] * leaves[later - 1]
    probabilities = per_context.probabilities.astype(np.float64) * residual[pair_of_node]

    # Nodes are already in the merged order (by query, longest context first, tree order): keep
    # each query's first max_nodes kept nodes.
    candidates = np.flatnonzero(kept)
    owners = query_of_node[candidates]
    starts = np.searchsorted(owners, np.arange(queries))
    position = np.arange(len(candidates)) - starts[owners]
    chosen = candidates[position < max_nodes[owners]]
    chosen_owner = query_of_node[chosen]
    counts = np.bincount(chosen_owner, minlength=queries)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    new_index = np.full(len(per_context.tokens), -1, np.int64)
    new_index[chosen] = np.arange(len(chosen))
    new_parents = np.where(has_parent[chosen], new_index[parent_flat[chosen]] - offsets[chosen_owner], -1)
    merged_probabilities = probabilities[chosen].astype(np.float32)
    longest = np.zeros(queries, np.int32)
    longest[owner[rank == 0]] = per_context.context_lengths[rank == 0]
    return DraftBatch(
        per_context.tokens[chosen].astype(np.int32),
        new_parents.astype(np.int32),
        merged_probabilities,
        offsets,
        np.where(counts > 0, longest, 0).astype(np.int32),
        np.bincount(chosen_owner, weights=merged_probabilities, minlength=queries).astype(np.float32),
    )


def _branch_roots(parent_flat: np.ndarray, has_parent: np.ndarray) -> np.ndarray:
    """Each node's first-level ancestor (itself at the first level); parents precede children, so
    pointer jumping settles every node in a few passes."""
    root = np.where(has_parent, parent_flat, np.arange(len(parent_flat)))
    while True:
        jumped = root[root]
        if np.array_equal(jumped, root):
            return root
        root = jumped
