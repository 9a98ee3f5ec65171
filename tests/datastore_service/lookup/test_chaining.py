"""CHAINED lookups (chaining.py) on randomized batches of stored, extended and random contexts with
node and depth limits: every answer starts with the merged answer, whole and in its order, keeps
within its limits, is a tree, and every node grown past the merged answer is a node of the merged
answer for the context its graft leaf ends (the query's tokens and the path to the leaf), with that
node's probability times the leaf's. And chaining does grow trees: on stored contexts whose trees
are cut by depth, chained answers hold more nodes than merged ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import DraftTree
from datastore_service.lookup.chaining import NODES_PER_LEAF
from datastore_service.lookup.draft_index import DraftIndex
from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS
from tests.datastore_service.lookup.test_small_batch import sequences
from tests.datastore_service.lookup.test_tree_merge import paths


@pytest.fixture(scope="module", params=["big-ids", "edge-ids"])
def case(request: pytest.FixtureRequest, big_id_store: Path, edge_id_store: Path) -> tuple[DraftIndex, list[int]]:
    if request.param == "big-ids":
        return DraftIndex.load(big_id_store), BIG_IDS
    return DraftIndex.load(edge_id_store), EDGE_IDS


def grown_from_a_leaf(index: DraftIndex, row: list[int], tree: DraftTree, node: int, depth_limit: int) -> bool:
    """Whether some ancestor g of `node` is a graft leaf for it: the path g -> node is a path of
    the merged answer for (row + path to g), within NODES_PER_LEAF nodes and the depth left, with
    the probability of that path times g's."""
    node_paths, depths = paths(tree), tree.depths()
    graft = int(tree.parents[node])
    while graft >= 0:
        context = (row + list(node_paths[graft]))[-index.width :]
        left = depth_limit - int(depths[graft])
        answer = index.lookup([context], NODES_PER_LEAF, left, "merged").trees()[0]
        below = node_paths[node][len(node_paths[graft]) :]
        found = dict(zip(paths(answer), answer.probabilities.tolist()))
        if below in found and np.isclose(
            tree.probabilities[node], np.float32(tree.probabilities[graft] * found[below]), rtol=1e-5
        ):
            return True
        graft = int(tree.parents[graft])
    return False


@given(data=st.data())
@settings(max_examples=80, deadline=None)
def test_chained_trees_extend_merged_trees_with_the_store_s_own_trees(
    case: tuple[DraftIndex, list[int]], data: st.DataObject
):
    index, alphabet = case
    rows = data.draw(sequences(index, alphabet))
    limits = st.lists(st.integers(0, 24), min_size=len(rows), max_size=len(rows))
    max_nodes, max_depth = data.draw(limits), [min(d, 6) for d in data.draw(limits)]
    batch = index.prepare(rows, max_nodes, max_depth)
    chained = index.lookup(rows, max_nodes, max_depth, "chained")
    merged = index.lookup(rows, max_nodes, max_depth, "merged")
    assert np.array_equal(chained.context_lengths, merged.context_lengths)
    for row, nodes, depth, tree, start in zip(
        rows, batch.max_nodes.tolist(), batch.max_depth.tolist(), chained.trees(), merged.trees()
    ):
        tree.check_integrity()
        assert len(tree) <= nodes and (len(tree) == 0 or tree.depths().max() <= depth)
        assert paths(tree)[: len(start)] == paths(start)
        assert np.array_equal(tree.probabilities[: len(start)], start.probabilities)
        assert len(set(paths(tree))) == len(tree), "a path drafted twice"
        for node in range(len(start), len(tree)):
            assert grown_from_a_leaf(index, row, tree, node, depth), f"node {node} of {paths(tree)[node]}"


def test_chaining_grows_trees_cut_by_depth(case: tuple[DraftIndex, list[int]]):
    index, _ = case
    rows = [index.context_matrix[i, index.width - int(index.context_lengths[i]) :].tolist() for i in range(40)]
    merged = index.lookup(rows, 32, 2, "merged").trees()
    chained = index.lookup(rows, 32, 2, "chained").trees()
    assert sum(map(len, chained)) > sum(map(len, merged))
    assert sum(tree.score for tree in chained) > sum(tree.score for tree in merged)
