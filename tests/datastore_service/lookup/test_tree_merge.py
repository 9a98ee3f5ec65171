"""MERGED lookups against a plain-Python oracle of the rule (tree_merge.py): on randomized batches of
stored, extended and random contexts with node and depth limits, every answer holds exactly the
oracle's nodes, in its order, with its probabilities; it is a tree, and it starts with the longest
match's answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import DraftTree
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.lookup.small_batch import SMALL_BATCH
from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS, queries


@pytest.fixture(scope="module", params=["big-ids", "edge-ids"])
def case(request: pytest.FixtureRequest, big_id_store: Path, edge_id_store: Path) -> tuple[DraftIndex, list[int]]:
    if request.param == "big-ids":
        return DraftIndex.load(big_id_store), BIG_IDS
    return DraftIndex.load(edge_id_store), EDGE_IDS


def paths(tree: DraftTree) -> list[tuple[int, ...]]:
    found: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        found.append((found[parent] if parent >= 0 else ()) + (token,))
    return found


def oracle(index: DraftIndex, row: list[int], max_nodes: int, max_depth: int) -> tuple[int, dict]:
    """(longest matched length, {path: probability}) by the rule, one context at a time."""
    candidates: list[tuple[tuple[int, ...], float]] = []  # (path, probability), in the merged order
    covered: set[int] = set()
    residual, longest = 1.0, 0
    for length in range(len(row), 0, -1):
        answer = index.lookup([row[-length:]], max_nodes, max_depth, "longest")
        if int(answer.context_lengths[0]) != length:
            continue  # no stored context of exactly this length
        longest = longest or length
        tree = answer.trees()[0]
        kept_first_level = 0.0
        for path, probability in zip(paths(tree), tree.probabilities.tolist()):
            if path[0] in covered:
                continue
            if len(path) == 1:
                kept_first_level += probability
            candidates.append((path, probability * residual))
        covered |= {path[0] for path in paths(tree)}
        residual *= min(max(1.0 - kept_first_level, 0.0), 1.0)
    return longest, dict(candidates[:max_nodes])


@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_merged_trees_hold_the_rule_s_nodes(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    index, alphabet = case
    rows = data.draw(queries(index, alphabet, SMALL_BATCH))
    limits = st.lists(st.integers(0, 12), min_size=len(rows), max_size=len(rows))
    max_nodes, max_depth = data.draw(limits), [min(d, 5) for d in data.draw(limits)]
    batch = index.prepare(rows, max_nodes, max_depth)
    answer = index.lookup(rows, max_nodes, max_depth, "merged")
    for row, nodes, depth, tree, length in zip(
        rows, batch.max_nodes.tolist(), batch.max_depth.tolist(), answer.trees(), answer.context_lengths.tolist()
    ):
        assert all(parent < node for node, parent in enumerate(tree.parents.tolist())), "parents come first"
        expected_length, expected = oracle(index, row, nodes, depth)
        assert length == (expected_length if expected else 0)
        assert paths(tree) == list(expected)
        np.testing.assert_allclose(tree.probabilities, list(expected.values()), rtol=1e-6)
        longest = index.lookup([row], nodes, depth, "longest").trees()[0]
        assert paths(tree)[: len(longest)] == paths(longest)  # the longest match's answer comes first


def test_the_longest_context_s_tree_is_kept_whole_and_shorter_ones_fill_in(case: tuple[DraftIndex, list[int]]):
    """Against a query with two matching contexts: merged holds the longest match's tree and more."""
    index, _ = case
    for stored in range(len(index.context_hashes)):
        context = index.context_matrix[stored, index.width - int(index.context_lengths[stored]) :].tolist()
        if len(context) < 2 or index.lookup([context[-1:]], 64, 0, "longest").context_lengths[0] != 1:
            continue
        longest = index.lookup([context], 64, 0, "longest").trees()[0]
        merged = index.lookup([context], 64, 0, "merged").trees()[0]
        shorter = index.lookup([context[-1:]], 64, 0, "longest").trees()[0]
        if {p[0] for p in paths(shorter)} <= {p[0] for p in paths(longest)}:
            continue  # the shorter context drafts nothing new here
        assert set(paths(longest)) < set(paths(merged))
        assert merged.score > longest.score
        return
    pytest.fail("no stored context with a shorter one that drafts something new")
