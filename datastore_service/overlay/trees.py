"""Merged draft trees: for each context the overlay saw at least `min_count` times, one tree ranked
over the store's counts plus the overlay's, kept ready for lookups.

A node's merged count is T = S + O: S its count in the store's corpus (stored probability x the
context's corpus count), O its count in the overlay. Nodes rank by (T desc, depth, key of the
(node, context) pair) and keep the first `top_c`, as a build ranks (count desc, depth, then a
fixed tie-break); a node's probability is T / (N + O_c), N and O_c the context's corpus and
overlay counts. Parents never rank below their children (T and depth both say so), so every
prefix is a tree, as in a store.

Updates are incremental: a batch's n-grams can only move their own contexts' trees, and counts
only grow, so a context's new top-c lies within its old top-c, the store's tree and the n-grams
the batch touched. Candidates are exactly those; nothing else of the overlay is read.

Example (top_c 2): the store's tree for `(` is {`self` S=50, `)` S=30} with N=100. The overlay saw
`(` 40 times, followed by `x` 35 times and `self` 5 times: merged `self` 55/140, `x` 35/140.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datastore_service.draft import MAX_DEPTH_LIMIT, DraftBatch, QueryBatch
from datastore_service.lookup.index_loader import LookupIndex
from datastore_service.lookup.tree_merge import merge_trees
from datastore_service.overlay.compiled_answer import kernel, learned_answers
from datastore_service.overlay.counts import NgramCounts, NgramDelta
from datastore_service.overlay.hashing import find, mix, path_keys, suffix_keys
from datastore_service.overlay.store_contexts import StoreContexts

STORE_LOOKUP_CHUNK = 8192
_CANDIDATE_TYPES = (np.uint64, np.uint64, np.uint64, np.int32, np.int32, np.int64)


@dataclass(frozen=True)
class TreeParams:
    """The store's shape, which merged trees keep: context length, depth, nodes per tree, min count."""

    width: int
    depth: int
    top_c: int
    min_count: int

    @property
    def levels(self) -> int:
        return self.width + self.depth

    @classmethod
    def of(cls, index: LookupIndex) -> TreeParams:
        params = index.info.build_params
        return cls(index.info.max_context, index.info.max_depth, int(params["top_c"]), int(params["min_count"]))


@dataclass
class Candidates:
    """Possible nodes of contexts' trees, one row per (context, node), duplicates allowed."""

    contexts: np.ndarray  # uint64 context key
    nodes: np.ndarray  # uint64 node key = key(context + path)
    parents: np.ndarray  # uint64 parent node key (the context key at depth 1)
    tokens: np.ndarray  # int32
    depths: np.ndarray  # int32
    store_counts: np.ndarray  # int64 S; 0 = the store does not draft this node

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        if not parts:
            return cls(*(np.empty(0, dtype) for dtype in _CANDIDATE_TYPES))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    def take(self, rows: np.ndarray) -> Candidates:
        return Candidates(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.int64)
    ends = np.cumsum(sizes)
    return np.repeat(starts - ends + sizes, sizes) + np.arange(total)


def _ranking_order(contexts: np.ndarray, merged: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """The order by (context, merged count desc, depth), ties kept in their current order: one sort
    of packed 64-bit keys where they fit (several times faster than lexsort's three passes)."""
    if len(contexts) == 0:
        return np.empty(0, np.int64)
    by_context = np.argsort(contexts)
    ordered = contexts[by_context]
    group = np.empty(len(contexts), np.int64)
    group[by_context] = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
    distinct, rank = np.unique(merged, return_inverse=True)
    fields = (  # most significant first
        (group, int(group.max())),
        (len(distinct) - 1 - rank, len(distinct) - 1),  # more merged counts first
        (depths, int(depths.max())),
        (np.arange(len(contexts)), len(contexts) - 1),  # ties: the current order
    )
    if sum(int(top).bit_length() for _, top in fields) > 64:
        return np.lexsort((depths, -merged, group))
    key = np.zeros(len(contexts), np.uint64)
    for values, top in fields:
        key = (key << np.uint64(int(top).bit_length())) | values.astype(np.uint64)
    return np.argsort(key)


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.empty(0, np.int64)
    return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))


class _Rows:
    """Append-only node arrays; a tree's rows never move, so a lookup holding an older view reads them safely."""

    FIELDS = {
        "nodes": np.uint64,
        "parent_keys": np.uint64,
        "tokens": np.int32,
        "parents": np.int32,
        "depths": np.int32,
        "store_counts": np.int64,
        "probabilities": np.float32,
        "cumulative": np.float32,
    }

    def __init__(self, capacity: int = 1024) -> None:
        self.used = 0
        for name, dtype in self.FIELDS.items():
            setattr(self, name, np.empty(capacity, dtype))

    def append(self, values: dict[str, np.ndarray]) -> int:
        count = len(values["nodes"])
        if self.used + count > len(self.nodes):
            capacity = max(2 * len(self.nodes), self.used + count)
            for name in self.FIELDS:
                grown = np.empty(capacity, self.FIELDS[name])
                grown[: self.used] = getattr(self, name)[: self.used]
                setattr(self, name, grown)
        start = self.used
        for name, array in values.items():
            getattr(self, name)[start : start + count] = array
        self.used += count
        return start

    @property
    def row_bytes(self) -> int:
        return sum(np.dtype(dtype).itemsize for dtype in self.FIELDS.values())


@dataclass(frozen=True)
class TreeView:
    """What a lookup reads: contexts sorted by key, each with its rows' start and size."""

    keys: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    rows: _Rows

    @classmethod
    def empty(cls) -> TreeView:
        return cls(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64), _Rows(0))


class MergedTrees:
    """The merged trees of one store version; `update` folds a counted batch in."""

    def __init__(self, params: TreeParams, index: LookupIndex, store: StoreContexts) -> None:
        self.params, self.index, self.store = params, index, store
        self.view = TreeView.empty()
        self.rows = _Rows()
        self.seen = np.empty(0, np.int32)  # per context, generation of its last update (eviction)
        self.dead_rows = 0

    @property
    def nbytes(self) -> int:
        view = self.view
        return self.rows.used * self.rows.row_bytes + view.keys.nbytes * 3 + self.seen.nbytes + self.store.nbytes

    # -- updates ----------------------------------------------------------------------------------

    def update(self, delta: NgramDelta, table: NgramCounts, totals: np.ndarray, generation: int) -> None:
        """Re-rank the trees of every context `delta` touched; `totals` = the delta n-grams' counts now."""
        p = self.params
        touched = (delta.levels <= p.width) & (totals >= p.min_count)
        if not touched.any():
            return
        contexts = delta.keys[touched]
        parts = [
            self._overlay_candidates(delta, totals),
            self._existing_candidates(contexts),
            # Every touched context's stored tree, not only new ones': a stored node that fell out of
            # the top_c climbs back with its store count when the overlay sees it again.
            self._store_candidates(contexts, delta.heads[touched], delta.levels[touched]),
        ]
        self._replace(contexts, self._rank(Candidates.concat(parts), table), generation)

    def _overlay_candidates(self, delta: NgramDelta, totals: np.ndarray) -> Candidates:
        p, parts = self.params, []
        frequent = totals >= p.min_count
        for length in range(1, p.width + 1):
            rows = np.flatnonzero(frequent & (delta.levels > length) & (delta.levels - length <= p.depth))
            parts.append(
                Candidates(
                    delta.prefixes[rows, length - 1],
                    delta.keys[rows],
                    delta.parents[rows],
                    delta.tokens[rows],
                    delta.levels[rows].astype(np.int32) - length,
                    np.zeros(len(rows), np.int64),
                )
            )
        return Candidates.concat(parts)

    def _existing_candidates(self, contexts: np.ndarray) -> Candidates:
        view = self.view
        if len(view.keys) == 0:
            return Candidates.concat([])
        where, present = find(view.keys, contexts)
        where = where[present]
        rows = _ranges(view.starts[where], view.sizes[where])
        return Candidates(
            np.repeat(contexts[present], view.sizes[where]),
            view.rows.nodes[rows],
            view.rows.parent_keys[rows],
            view.rows.tokens[rows],
            view.rows.depths[rows],
            view.rows.store_counts[rows],
        )

    def _store_candidates(self, contexts: np.ndarray, heads: np.ndarray, levels: np.ndarray) -> Candidates:
        """The store's own tree of each context, as candidates with its counts S = probability x N."""
        p, parts = self.params, []
        for first in range(0, len(contexts), STORE_LOOKUP_CHUNK):
            chunk = slice(first, first + STORE_LOOKUP_CHUNK)
            keys, lengths = contexts[chunk], levels[chunk].astype(np.int64)
            tails = np.full((len(keys), self.index.width), -1, np.int64)
            for length in range(1, p.width + 1):
                rows = lengths == length
                tails[rows, self.index.width - length :] = heads[chunk][rows, :length]
            count = len(keys)
            batch = QueryBatch(
                tails, lengths, np.full(count, p.top_c, np.int64), np.full(count, MAX_DEPTH_LIMIT, np.int64)
            )
            answer = self.index.lookup_batch(batch, "longest")
            sizes = np.where(answer.context_lengths == lengths, np.diff(answer.offsets), 0)
            nodes = _ranges(answer.offsets[:-1], sizes)
            owner = np.repeat(np.arange(count), sizes)
            corpus = self.store.count_of(keys)[owner]
            tokens, parents = answer.tokens[nodes], answer.parents[nodes]
            starts = np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
            node_keys = path_keys(keys[owner], tokens, parents, starts)
            parent_keys = np.where(parents >= 0, node_keys[starts + np.maximum(parents, 0)], keys[owner])
            depths = np.ones(len(nodes), np.int32)
            for _ in range(p.depth):  # parents precede children: depth settles in max_depth passes
                depths = np.where(parents >= 0, depths[starts + np.maximum(parents, 0)] + 1, 1)
            store_counts = np.rint(answer.probabilities[nodes].astype(np.float64) * corpus).astype(np.int64)
            parts.append(Candidates(keys[owner], node_keys, parent_keys, tokens, depths, np.maximum(store_counts, 1)))
        return Candidates.concat(parts)

    def _rank(self, candidates: Candidates, table: NgramCounts) -> dict[str, np.ndarray]:
        p = self.params
        # One row per (context, node), in the order of their pair key, which breaks ranking ties.
        pair = mix(candidates.nodes, candidates.contexts)
        order = np.argsort(pair)
        firsts = _group_starts(pair[order])
        store_counts = np.maximum.reduceat(candidates.store_counts[order], firsts) if len(firsts) else firsts
        rows = order[firsts]
        overlay_counts = table.count_of(candidates.nodes[rows])
        kept = (store_counts > 0) | (overlay_counts >= p.min_count)
        rows, merged = rows[kept], store_counts[kept] + overlay_counts[kept]
        store_counts = store_counts[kept]
        ranked = _ranking_order(candidates.contexts[rows], merged, candidates.depths[rows])
        rows, merged, store_counts = rows[ranked], merged[ranked], store_counts[ranked]
        starts = _group_starts(candidates.contexts[rows])
        sizes = np.diff(np.append(starts, len(rows))).astype(np.int64)
        top = np.arange(len(rows)) - np.repeat(starts, sizes) < p.top_c
        c, merged = candidates.take(rows[top]), merged[top]
        c.store_counts = store_counts[top]
        # Local parent index: the row of (context, parent key) inside the same tree.
        starts = _group_starts(c.contexts)
        sizes = np.diff(np.append(starts, len(c.contexts))).astype(np.int64)
        tree_start = np.repeat(starts, sizes)
        pair = mix(c.nodes, c.contexts)
        by_pair = np.argsort(pair)
        at, _ = find(pair[by_pair], mix(c.parents, c.contexts))
        parents = np.where(c.depths > 1, by_pair[at] - tree_start, -1).astype(np.int32)
        context_keys = c.contexts[starts]
        total = (self.store.count_of(context_keys) + table.count_of(context_keys)).astype(np.float64)
        probabilities = np.minimum(merged / np.repeat(total, sizes), 1.0).astype(np.float32)
        running = np.cumsum(probabilities, dtype=np.float64)
        before = np.concatenate([[0.0], running])[starts]
        return {
            "contexts": context_keys,
            "sizes": sizes.astype(np.int64),
            "nodes": c.nodes,
            "parent_keys": c.parents,
            "tokens": c.tokens,
            "parents": parents,
            "depths": c.depths,
            "store_counts": c.store_counts,
            "probabilities": probabilities,
            "cumulative": (running - np.repeat(before, sizes)).astype(np.float32),
        }

    def _replace(self, touched: np.ndarray, ranked: dict[str, np.ndarray], generation: int) -> None:
        contexts, sizes = ranked.pop("contexts"), ranked.pop("sizes")
        first = self.rows.append(ranked)
        starts = first + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        view = self.view
        stale = np.isin(view.keys, touched, assume_unique=True)
        self.dead_rows += int(view.sizes[stale].sum())
        keys = np.concatenate([view.keys[~stale], contexts])
        order = np.argsort(keys, kind="stable")
        seen = np.concatenate([self.seen[~stale], np.full(len(contexts), generation, np.int32)])
        self.seen = seen[order]
        self.view = TreeView(
            keys[order],
            np.concatenate([view.starts[~stale], starts])[order],
            np.concatenate([view.sizes[~stale], sizes])[order],
            self.rows,
        )
        if self.dead_rows > max(self.rows.used // 2, 1 << 16):
            self._compact()

    def _compact(self) -> None:
        """Copy the live rows into fresh arrays (older views keep the old ones until they finish)."""
        view, rows = self.view, _Rows(max(int(self.view.sizes.sum()), 1024))
        live = _ranges(view.starts, view.sizes)
        rows.append({name: getattr(view.rows, name)[live] for name in _Rows.FIELDS})
        starts = np.concatenate([[0], np.cumsum(view.sizes)[:-1]]).astype(np.int64)
        self.rows, self.dead_rows = rows, 0
        self.view = TreeView(view.keys, starts, view.sizes, rows)

    def forget_before(self, generation: int) -> None:
        """Drop the trees of contexts not updated since `generation`: the store's own trees answer again."""
        view, keep = self.view, self.seen >= generation
        self.dead_rows += int(view.sizes[~keep].sum())
        self.seen = self.seen[keep]
        self.view = TreeView(view.keys[keep], view.starts[keep], view.sizes[keep], self.rows)
        self._compact()

    def bytes_by_generation(self, generations: int) -> np.ndarray:
        return np.bincount(self.seen, weights=self.view.sizes * self.rows.row_bytes, minlength=generations)


def answer(view: TreeView, batch: QueryBatch, static: DraftBatch, selection: str) -> DraftBatch:
    """The store's answer with merged trees in place of its own where they rank higher: the compiled
    kernel's for LONGEST_MATCH and MERGED when it is built, else `answer_in_numpy`'s."""
    if len(view.keys) == 0:
        return static
    if selection in ("longest", "merged") and kernel() is not None:
        answered = learned_answers(view, batch, static, merge=selection == "merged")
        return static if answered is None else answered
    return answer_in_numpy(view, batch, static, selection)


def answer_in_numpy(view: TreeView, batch: QueryBatch, static: DraftBatch, selection: str) -> DraftBatch:
    """The store's answer with merged trees in place of its own where they rank higher (the rule;
    compiled_answer.py is its compiled form for LONGEST_MATCH and MERGED).

    SCORED: per query, the merged tree with the highest score within max_nodes among the query's
    suffixes, against the store's chosen tree unless a merged tree replaces that very context.
    LONGEST_MATCH: the longest context either side holds (the merged tree when both do).
    MERGED: the LONGEST_MATCH choice first, then the store's combined answer merged in behind it
    (lookup/tree_merge.py: its branches for first tokens the chosen tree does not draft)."""
    if len(view.keys) == 0:
        return static
    width = batch.tails.shape[1]
    keys = suffix_keys(batch.tails, batch.lengths)
    where = np.minimum(np.searchsorted(view.keys, keys), len(view.keys) - 1)
    matched = (view.keys[where] == keys) & (keys != 0)
    if not matched.any():
        return static
    rows = np.arange(len(keys))
    static_length = static.context_lengths.astype(np.int64)
    replaced = (static_length > 0) & matched[rows, np.maximum(static_length - 1, 0)]
    if selection in ("longest", "merged"):
        best = width - 1 - np.argmax(matched[:, ::-1], axis=1)
        use = matched.any(axis=1) & (best + 1 >= static_length)
    else:
        kept = np.minimum(batch.max_nodes[:, None], view.sizes[where])
        value = np.where(matched, view.rows.cumulative[view.starts[where] + kept - 1], -1.0)
        best = width - 1 - np.argmax(value[:, ::-1], axis=1)
        best_value = value[rows, best]
        static_value = np.where((static_length > 0) & ~replaced, static.scores, -1.0)
        use = (best_value > static_value) | ((best_value == static_value) & (best + 1 > static_length))
        use &= matched[rows, best]
    if not use.any():
        return static
    chosen = where[rows, best]
    spliced = _splice(view, chosen, best + 1, use, batch, static)
    if selection != "merged":
        return spliced
    # Per query, the learned tree first and the store's answer behind it. Only where a learned tree
    # was taken and leaves room: a query that kept the store's answer has it already, and a learned
    # tree of max_nodes nodes is the whole merged answer (merging first keeps it, whole and first).
    room = np.flatnonzero(use & (np.diff(spliced.offsets) < batch.max_nodes))
    if len(room) == 0:
        return spliced
    both = _interleaved(spliced, static, room)
    merged = merge_trees(both, np.repeat(np.arange(len(room)), 2), len(room), batch.max_nodes[room])
    return _with_queries(spliced, room, merged)


def _with_queries(batch: DraftBatch, rows: np.ndarray, trees: DraftBatch) -> DraftBatch:
    """`batch` with query rows[i]'s tree replaced by tree i of `trees`."""
    sizes, starts = np.diff(batch.offsets), batch.offsets[:-1].copy()
    sizes[rows], starts[rows] = np.diff(trees.offsets), len(batch.tokens) + trees.offsets[:-1]
    context_lengths, scores = batch.context_lengths.copy(), batch.scores.copy()
    context_lengths[rows], scores[rows] = trees.context_lengths, trees.scores
    return _gathered(batch, trees, starts, sizes, context_lengths, scores)


def _interleaved(first: DraftBatch, second: DraftBatch, rows: np.ndarray) -> DraftBatch:
    """For each query rows[i], its tree of `first` as tree 2i and its tree of `second` as tree 2i+1."""
    sizes = np.stack([np.diff(first.offsets)[rows], np.diff(second.offsets)[rows]], axis=1).ravel()
    starts = np.stack([first.offsets[rows], len(first.tokens) + second.offsets[rows]], axis=1).ravel()
    context_lengths = np.stack([first.context_lengths[rows], second.context_lengths[rows]], axis=1).ravel()
    scores = np.stack([first.scores[rows], second.scores[rows]], axis=1).ravel()
    return _gathered(first, second, starts, sizes, context_lengths, scores)


def _gathered(
    first: DraftBatch,
    second: DraftBatch,
    starts: np.ndarray,
    sizes: np.ndarray,
    context_lengths: np.ndarray,
    scores: np.ndarray,
) -> DraftBatch:
    """Trees cut from `first`'s nodes followed by `second`'s: tree i is `sizes[i]` nodes from flat
    index `starts[i]` of the two joined."""
    gather = _ranges(starts, sizes)

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(first, name), getattr(second, name)])[gather]

    return DraftBatch(
        joined("tokens"),
        joined("parents"),
        joined("probabilities"),
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        context_lengths,
        scores,
    )


def _splice(
    view: TreeView, chosen: np.ndarray, lengths: np.ndarray, use: np.ndarray, batch: QueryBatch, static: DraftBatch
) -> DraftBatch:
    """Queries with `use` take their merged tree (cut to max_nodes and max_depth), the others the store's."""
    rows = view.rows
    take = np.where(use, np.minimum(batch.max_nodes, view.sizes[chosen]), 0)
    nodes = _ranges(view.starts[chosen], take)
    query_of_node = np.repeat(np.arange(len(use)), take)
    parents = rows.parents[nodes]
    keep = rows.depths[nodes] <= batch.max_depth[query_of_node]
    if not keep.all():
        # Dropping deep nodes shifts indices: renumber the kept nodes' parents.
        first = np.concatenate([[0], np.cumsum(take)[:-1]])
        new_index = np.cumsum(keep) - 1
        has_parent = parents >= 0
        parent_flat = first[query_of_node] + np.where(has_parent, parents, 0)
        new_first = new_index[first[query_of_node]] + ~keep[first[query_of_node]]
        parents = np.where(has_parent, new_index[parent_flat] - new_first, -1)
        nodes, query_of_node, parents = nodes[keep], query_of_node[keep], parents[keep]
    merged_sizes = np.bincount(query_of_node, minlength=len(use))
    static_sizes = np.where(use, 0, np.diff(static.offsets))
    sizes = merged_sizes + static_sizes
    # Every answer's nodes, gathered from the store's arrays followed by the merged ones.
    source_starts = np.where(
        use, len(static.tokens) + np.concatenate([[0], np.cumsum(merged_sizes)[:-1]]), static.offsets[:-1]
    )
    gather = _ranges(source_starts, sizes)
    probabilities = np.concatenate([static.probabilities, rows.probabilities[nodes]])[gather]
    owner = np.repeat(np.arange(len(use)), sizes)
    scores = np.bincount(owner, weights=probabilities, minlength=len(use)).astype(np.float32)
    context_lengths = np.where(use, lengths, static.context_lengths)
    return DraftBatch(
        np.concatenate([static.tokens, rows.tokens[nodes]])[gather],
        np.concatenate([static.parents, parents.astype(np.int32)])[gather],
        probabilities,
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        np.where(sizes > 0, context_lengths, 0).astype(np.int32),
        np.where(use, scores, static.scores).astype(np.float32),
    )
