"""Drafts from the sequence itself (prompt lookup), merged with the datastore's tree.

Models repeat their prompt and themselves (names, signatures, docstrings, list patterns). The
sequence's newest n tokens (n = 4, 3, 2, longest first) are searched for earlier in the sequence;
the tokens after the most recent matches become a small trie whose node probability is the share
of matches that continue along it. The datastore's tree and this one are merged path by path; a
path found by both gets 1 - (1 - p) * (1 - q). Ranking the merged nodes by probability keeps
parents ahead of children, so the result is again a best-first tree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datastore_service.draft import DraftTree

from .draft_sources import DraftSource

try:  # the compiled form of `with_prompt_lookup` (prompt_lookup_kernel.c), built by the install
    from decoder import _prompt_lookup
except ImportError:  # built without a C compiler: the Python rule below answers
    _prompt_lookup = None

NGRAM_SIZES = (4, 3, 2)
MAX_DEPTH = 8
MAX_MATCHES = 8
_NGRAM_SIZES = np.asarray(NGRAM_SIZES, np.int64)  # as the kernel reads them


def prompt_lookup_tree(
    history: np.ndarray,
    ngram_sizes: Sequence[int] = NGRAM_SIZES,
    max_depth: int = MAX_DEPTH,
    max_matches: int = MAX_MATCHES,
) -> DraftTree:
    """The continuations of the most recent earlier occurrences of the history's newest n tokens,
    for the first size in `ngram_sizes` that occurs, as a tree of match shares."""
    ends = _match_ends(history, max(ngram_sizes, default=0))
    for n in ngram_sizes:
        if n >= len(ends) or len(ends[n]) == 0:
            continue
        starts = ends[n][::-1][:max_matches] + 1  # most recent first; continuations start after the match
        counts: dict[tuple[int, ...], int] = {}
        for start in starts.tolist():
            continuation = tuple(history[start : start + max_depth].tolist())
            for depth in range(1, len(continuation) + 1):
                counts[continuation[:depth]] = counts.get(continuation[:depth], 0) + 1
        return _tree_from_paths({path: count / len(starts) for path, count in counts.items()}, context_length=n)
    return DraftTree.empty()


def _match_ends(history: np.ndarray, longest: int) -> list[np.ndarray]:
    """`ends[n]`: positions j < len - 1 where history[j - n + 1 .. j] equals the newest n tokens,
    ascending, for n = 1..longest (fewer where the history is short). Each size narrows the one
    below it by one comparison, a few small array operations per step instead of one window scan per size."""
    ends: list[np.ndarray] = [np.arange(len(history) - 1)]
    for n in range(1, min(longest, len(history) - 1) + 1):
        previous = ends[-1]
        candidates = previous[previous >= n - 1]
        ends.append(candidates[history[candidates - (n - 1)] == history[-n]])
    return ends


def _paths(tree: DraftTree) -> dict[tuple[int, ...], float]:
    paths: list[tuple[int, ...]] = []
    result = {}
    for token, parent, probability in zip(tree.tokens.tolist(), tree.parents.tolist(), tree.probabilities.tolist()):
        path = (paths[parent] if parent >= 0 else ()) + (token,)
        paths.append(path)
        result[path] = probability
    return result


def _tree_from_paths(probabilities: dict[tuple[int, ...], float], context_length: int) -> DraftTree:
    ordered = sorted(probabilities, key=lambda path: (-probabilities[path], len(path), path))
    index = {path: i for i, path in enumerate(ordered)}
    tokens = np.array([path[-1] for path in ordered], np.int32)
    parents = np.array([index[path[:-1]] if len(path) > 1 else -1 for path in ordered], np.int32)
    values = np.array([probabilities[path] for path in ordered], np.float32)
    return DraftTree(tokens, parents, values, context_length if len(ordered) else 0, float(values.sum()))


def merge_trees(first: DraftTree, second: DraftTree) -> DraftTree:
    if len(first) == 0:
        return second
    if len(second) == 0:
        return first
    merged = _paths(first)
    for path, q in _paths(second).items():
        merged[path] = 1.0 - (1.0 - merged.get(path, 0.0)) * (1.0 - q)
    return _tree_from_paths(merged, max(first.context_length, second.context_length))


def with_prompt_lookup(tree: DraftTree, history: np.ndarray | list[int], compiled: bool = True) -> DraftTree:
    """`tree` merged with the prompt lookup tree of `history` (int64 ids, or a list of ints: the compiled
    call reads a decode loop's list as it is): `merge_trees(tree, prompt_lookup_tree(history))`, in one
    compiled call when the extension is built (`compiled` False: the Python rule, which tests hold the
    two to)."""
    if _prompt_lookup is None or not compiled:
        return merge_trees(tree, prompt_lookup_tree(np.asarray(history, np.int64)))
    room = len(tree) + MAX_MATCHES * MAX_DEPTH
    tokens, parents, probabilities = np.empty(room, np.int32), np.empty(room, np.int32), np.empty(room, np.float32)
    size, matched = _prompt_lookup.merged(
        history if type(history) is list else np.ascontiguousarray(history, np.int64),
        _NGRAM_SIZES,
        MAX_DEPTH,
        MAX_MATCHES,
        np.ascontiguousarray(tree.tokens, np.int32),
        np.ascontiguousarray(tree.parents, np.int32),
        np.ascontiguousarray(tree.probabilities, np.float32),
        tokens,
        parents,
        probabilities,
    )
    if matched == 0:
        return tree
    probabilities = probabilities[:size]
    return DraftTree(
        tokens[:size], parents[:size], probabilities, max(tree.context_length, matched), float(probabilities.sum())
    )


class WithPromptLookup:
    """A draft source whose trees also carry what the sequence itself predicts."""

    def __init__(self, source: DraftSource, history_tokens: int = 4096) -> None:
        self.source, self.history_tokens = source, history_tokens
        self.max_context = history_tokens

    def drafts(self, contexts: Sequence[Sequence[int]], max_nodes: int) -> list[DraftTree]:
        stored = self.source.drafts([c[-self.source.max_context :] for c in contexts], max_nodes)
        return [with_prompt_lookup(tree, context[-self.history_tokens :]) for tree, context in zip(stored, contexts)]
