"""Merged trees against a plain-Python ranking of the same counts: each context's tree holds the
top_c nodes by (store count + overlay count desc, depth), with probability T / (N + O_c), whether
the overlay learned everything in one refresh or a little at a time."""

from __future__ import annotations

from collections import Counter

import duckdb
import numpy as np
import pytest

from datastore_service.build.params import BuildParams
from datastore_service.lookup.index_loader import load_index
from datastore_service.overlay.hashing import ROOT, find, mix
from datastore_service.overlay.overlay import Overlay
from datastore_service.overlay.trees import _ranking_order
from datastore_service.sizes import Budget
from tests.datastore_service.store_factory import publish_token_store

VOCAB = 500
PARAMS = BuildParams(max_context=2, max_depth=3, top_c=6, min_count=2, budget=Budget(rows=10**9))


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 40, 400).tolist() for _ in range(5)]
    return load_index(publish_token_store(tmp_path_factory.mktemp("s") / "s.duckdb", documents, VOCAB, PARAMS))


def observed(seed: int) -> list[np.ndarray]:
    """Sequences that share n-grams with the store (tokens 0..39) and bring their own (40..59)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 60, int(rng.integers(5, 200))).astype(np.int32) for _ in range(30)]


def key_of(tokens: tuple[int, ...]) -> np.uint64:
    key = ROOT
    for token in tokens:
        key = mix(np.array([key], np.uint64), np.array([token]))[0]
    return key


def ngram_counts(sequences: list[np.ndarray]) -> Counter:
    levels = PARAMS.max_context + PARAMS.max_depth
    return Counter(
        tuple(s[i : i + n].tolist()) for s in sequences for n in range(1, levels + 1) for i in range(len(s) - n + 1)
    )


def corpus_counts(index) -> dict[tuple[int, ...], int]:
    with duckdb.connect(str(index.path), read_only=True) as connection:
        return {tuple(c): n for c, n in connection.execute("SELECT context, context_count FROM drafts").fetchall()}


def store_trees(index, contexts: list[tuple[int, ...]]) -> dict[tuple[int, ...], dict[tuple[int, ...], int]]:
    """Each context's stored tree as {path: count}, count = probability x the context's corpus count."""
    corpus, trees = corpus_counts(index), {}
    for first in range(0, len(contexts), 1024):
        chunk = contexts[first : first + 1024]
        answers = index.lookup_batch(index.prepare([list(c) for c in chunk], PARAMS.top_c, 0), "longest")
        for context, tree in zip(chunk, answers.trees()):
            paths, trees[context] = [], {}
            if tree.context_length != len(context):
                continue
            for token, parent, probability in zip(tree.tokens, tree.parents, tree.probabilities):
                paths.append((paths[parent] if parent >= 0 else ()) + (int(token),))
                trees[context][paths[-1]] = max(int(np.rint(np.float64(probability) * corpus[context])), 1)
    return trees


def reference(store: dict, overlay: Counter) -> list[tuple[tuple[int, ...], int]]:
    """(path, merged count) of one context's tree, best first; ties in any order."""
    nodes = set(store) | {path for path, count in overlay.items() if count >= PARAMS.min_count}
    merged = {path: store.get(path, 0) + overlay[path] for path in nodes}
    return sorted(merged.items(), key=lambda item: (-item[1], len(item[0])))[: PARAMS.top_c]


def tree_of(overlay: Overlay, context: tuple[int, ...]) -> list[tuple[tuple[int, ...], int]] | None:
    """(path, store count + overlay count) of the context's merged tree in order; None: it has none."""
    view = overlay.trees.view
    where = np.searchsorted(view.keys, key_of(context))
    if where == len(view.keys) or view.keys[where] != key_of(context):
        return None
    rows = slice(view.starts[where], view.starts[where] + view.sizes[where])
    paths: list[tuple[int, ...]] = []
    for token, parent in zip(view.rows.tokens[rows], view.rows.parents[rows]):
        paths.append((paths[parent] if parent >= 0 else ()) + (int(token),))
    nodes = view.rows.nodes[rows]
    return [(path, int(overlay.table.count_of(nodes[i : i + 1])[0]) + int(view.rows.store_counts[rows][i]))
            for i, path in enumerate(paths)]  # fmt: skip


def assert_same_ranking(actual, expected) -> None:
    """Same merged counts in the same order, and the same nodes wherever a tie does not decide."""
    assert [count for _, count in actual] == [count for _, count in expected]
    assert [len(path) for path, _ in actual] == [len(path) for path, _ in expected]
    last = expected[-1][1]
    assert {p for p, c in actual if c > last} == {p for p, c in expected if c > last}


@pytest.mark.parametrize("refreshes", [1, 10])
def test_trees_rank_store_and_overlay_counts_together(index, refreshes):
    sequences = observed(1)
    overlay = Overlay(None, index)
    for part in np.array_split(np.arange(len(sequences)), refreshes):
        overlay.observe([sequences[i] for i in part])
        overlay.refresh()
    counts = ngram_counts(sequences)
    contexts = sorted(g for g in counts if len(g) <= PARAMS.max_context)
    extensions: dict[tuple[int, ...], Counter] = {c: Counter() for c in contexts}
    for gram, count in counts.items():
        for length in range(max(1, len(gram) - PARAMS.max_depth), min(len(gram) - 1, PARAMS.max_context) + 1):
            extensions[gram[:length]][gram[length:]] = count
    corpus, checked = corpus_counts(index), 0
    for context, store in store_trees(index, contexts).items():
        expected = reference(store, extensions[context])
        actual = tree_of(overlay, context)
        if counts[context] < PARAMS.min_count or not expected:
            assert actual is None, context  # the store's own tree answers
            continue
        assert actual is not None, context
        assert_same_ranking(actual, expected)
        where = np.searchsorted(overlay.trees.view.keys, key_of(context))
        start = overlay.trees.view.starts[where]
        probabilities = overlay.trees.view.rows.probabilities[start : start + len(actual)]
        total = corpus.get(context, 0) + counts[context]
        assert np.allclose(probabilities, [count / total for _, count in actual], rtol=1e-6)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("rows", [0, 1, 7, 5000])
def test_ranking_order_is_a_stable_sort_by_context_count_desc_and_depth(rows):
    rng = np.random.default_rng(rows)
    contexts = rng.integers(0, max(rows // 20, 1), rows).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    merged, depths = rng.integers(0, 8, rows), rng.integers(1, 4, rows).astype(np.int32)
    expected = np.lexsort((np.arange(rows), depths, -merged, contexts))
    assert np.array_equal(_ranking_order(contexts, merged, depths), expected)


def test_find_locates_present_keys_and_flags_absent_ones():
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**63, 1000, dtype=np.uint64))
    needles = np.concatenate([keys[rng.integers(0, len(keys), 300)], rng.integers(0, 2**63, 300, dtype=np.uint64)])
    where, found = find(keys, needles)
    assert np.array_equal(found, np.isin(needles, keys))
    assert np.array_equal(keys[where[found]], needles[found])
    assert not find(np.empty(0, np.uint64), needles)[1].any()


def paths_of(tree) -> list[tuple[int, ...]]:
    found: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        found.append((found[parent] if parent >= 0 else ()) + (token,))
    return found


def test_merged_answers_put_the_learned_tree_first_and_the_store_s_other_branches_behind(index):
    overlay = Overlay(None, index)
    overlay.observe(observed(2))
    overlay.refresh()
    rng = np.random.default_rng(5)
    queries = [rng.integers(0, 60, 2).tolist() for _ in range(300)]
    batch = index.prepare(queries, 12, 0)

    def answered(selection: str) -> list:
        return overlay.lookup(index, batch, index.lookup_batch(batch, selection), selection).trees()

    learned_first, store_behind = 0, 0
    for query, merged, longest, store in zip(
        queries, answered("merged"), answered("longest"), index.lookup_batch(batch, "merged").trees()
    ):
        merged_paths, longest_paths = paths_of(merged), paths_of(longest)
        assert merged_paths[: len(longest_paths)] == longest_paths, query  # the longest-match answer first
        assert merged.context_length == longest.context_length
        drafted = {path[0] for path in longest_paths}
        extra = [p for p in paths_of(store) if p[0] not in drafted]
        assert merged_paths[len(longest_paths) :] == extra[: 12 - len(longest_paths)], query
        learned_first += paths_of(store) != longest_paths
        store_behind += bool(extra) and len(longest_paths) < 12
    assert learned_first > 20 and store_behind > 20  # both cases occur
