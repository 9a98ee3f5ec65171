"""CHAINED lookups (chaining.py) on randomized batches of stored, extended and random contexts with
node and depth limits: every answer starts with the merged answer, whole and in its order, keeps
within its limits, is a tree, and every node grown past the merged answer lies on a path of the
merged answer for the context some ancestor ends (the query's tokens and the path to it), no
likelier than that path's probability times the ancestor's. Under a node of the merged answer,
grown children are exactly scaled: new first tokens only, with the node's probability times the
mass its children leave. And chaining does grow trees: on stored contexts whose trees are cut by
depth, chained answers hold more nodes than merged ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import DraftTree
from datastore_service.lookup.chaining import NODES_PER_GRAFT
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.lookup.small_batch import SMALL_BATCH
from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS, queries
from tests.datastore_service.lookup.test_tree_merge import paths


@pytest.fixture(scope="module", params=["big-ids", "edge-ids"])
def case(request: pytest.FixtureRequest, big_id_store: Path, edge_id_store: Path) -> tuple[DraftIndex, list[int]]:
    if request.param == "big-ids":
        return DraftIndex.load(big_id_store), BIG_IDS
    return DraftIndex.load(edge_id_store), EDGE_IDS


def graft_answer(index: DraftIndex, row: list[int], tree: DraftTree, node: int, depth_limit: int) -> dict:
    """{path: probability} of the merged answer chaining asks for under `node`."""
    context = (row + list(paths(tree)[node]))[-index.width :]
    left = depth_limit - int(tree.depths()[node])
    answer = index.lookup([context], NODES_PER_GRAFT, left, "merged").trees()[0]
    return dict(zip(paths(answer), answer.probabilities.tolist()))


def grown_under_an_ancestor(index: DraftIndex, row: list[int], tree: DraftTree, node: int, depth_limit: int) -> bool:
    """Whether some ancestor g of `node` drafts it: the path g -> node is a path of g's graft answer,
    and `node` is no likelier than that path's probability times g's."""
    node_paths = paths(tree)
    graft = int(tree.parents[node])
    while graft >= 0:
        below = node_paths[node][len(node_paths[graft]) :]
        found = graft_answer(index, row, tree, graft, depth_limit)
        if below in found and tree.probabilities[node] <= tree.probabilities[graft] * found[below] * (1 + 1e-5):
            return True
        graft = int(tree.parents[graft])
    return False


def check_children_grown_under_answered_nodes(
    index: DraftIndex, row: list[int], tree: DraftTree, answered: int, depth_limit: int
) -> None:
    """A node of the merged answer gains only first tokens it lacks, scaled by the mass its answered
    children leave (only its own graft attaches children to it)."""
    parents = tree.parents.tolist()
    for node in range(answered):
        grown = [i for i in range(answered, len(tree)) if parents[i] == node]
        if not grown:
            continue
        kept_children = [i for i in range(answered) if parents[i] == node]
        probability = float(tree.probabilities[node])  # MERGED gives 0 where longer contexts leave no mass
        covered = sum(float(tree.probabilities[i]) for i in kept_children)
        left = 1.0 - covered / probability if probability > 0 else 1.0
        scale = probability * min(max(left, 0.0), 1.0)
        found = graft_answer(index, row, tree, node, depth_limit)
        for child in grown:
            token = int(tree.tokens[child])
            assert token not in {int(tree.tokens[i]) for i in kept_children}, "a first token drafted twice"
            np.testing.assert_allclose(tree.probabilities[child], np.float32(scale * found[(token,)]), rtol=1e-5)


@given(data=st.data())
@settings(max_examples=80, deadline=None)
def test_chained_trees_extend_merged_trees_with_the_store_s_own_trees(
    case: tuple[DraftIndex, list[int]], data: st.DataObject
):
    index, alphabet = case
    rows = data.draw(queries(index, alphabet, SMALL_BATCH))
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
            assert grown_under_an_ancestor(index, row, tree, node, depth), f"node {node} of {paths(tree)[node]}"
        check_children_grown_under_answered_nodes(index, row, tree, len(start), depth)


def test_chaining_grows_trees_cut_by_depth(case: tuple[DraftIndex, list[int]]):
    index, _ = case
    rows = [index.context_matrix[i, index.width - int(index.context_lengths[i]) :].tolist() for i in range(40)]
    merged = index.lookup(rows, 32, 2, "merged").trees()
    chained = index.lookup(rows, 32, 2, "chained").trees()
    assert sum(map(len, chained)) > sum(map(len, merged))
    assert sum(tree.score for tree in chained) > sum(tree.score for tree in merged)
