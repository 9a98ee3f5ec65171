"""The compiled lookup (store_answer.c) against the numpy path it compiles: the same trees, bit for
bit, for every selection (CHAINED grows compiled MERGED answers), batches on both sides of
SMALL_BATCH and QUICK_PREPARE, node and depth limits below and above the trees', ids on both sides
of 16 bits (so token columns of 2 and 4 bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import QueryError
from datastore_service.lookup.compiled_lookup import SELECTION_CODES, kernel
from datastore_service.lookup.draft_index import QUICK_PREPARE, SELECTIONS, DraftIndex
from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS, assert_same_answers, queries
from tests.extensions import assert_built, needs

EXTENSION = "datastore_service.lookup._store_answer"


@pytest.fixture(scope="module", params=["big-ids", "edge-ids"])
def case(request: pytest.FixtureRequest, big_id_store: Path, edge_id_store: Path) -> tuple[DraftIndex, list[int]]:
    if request.param == "big-ids":
        return DraftIndex.load(big_id_store), BIG_IDS
    return DraftIndex.load(edge_id_store), EDGE_IDS


def test_the_install_builds_the_kernel():
    assert_built(kernel(), EXTENSION)


@needs(kernel(), EXTENSION)
def test_the_stores_read_columns_of_several_widths(case: tuple[DraftIndex, list[int]]):
    """What the property below covers: each store's columns as the kernel reads them."""
    index, alphabet = case
    assert index.compiled is not None
    token_bytes = 4 if max(alphabet) >= 1 << 16 else 2
    assert index.compiled.sizes[0] == token_bytes and index.compiled.sizes[4] == token_bytes
    assert index.max_tree_depth > 1


@needs(kernel(), EXTENSION)
@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_compiled_answers_equal_the_numpy_path(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    index, alphabet = case
    rows = data.draw(queries(index, alphabet, QUICK_PREPARE + 8))
    limits = st.lists(st.integers(0, 40), min_size=len(rows), max_size=len(rows))
    max_nodes, max_depth = data.draw(limits), [min(d, 6) for d in data.draw(limits)]
    selection = data.draw(st.sampled_from(SELECTIONS))
    batch = index.prepare(rows, max_nodes, max_depth)
    assert_same_answers(index.lookup_batch(batch, selection), index.lookup_vectorised(batch, selection))
    expected = index.lookup_vectorised(index.prepare(rows, max_nodes[0], max_depth[0]), selection)
    assert_same_answers(index.lookup(rows, max_nodes[0], max_depth[0], selection), expected)


@needs(kernel(), EXTENSION)
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_one_sequence_s_tree_is_the_batch_answer_s(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    """`lookup_trees` of one plain list (the decode loop's call) answers straight from the list."""
    index, alphabet = case
    row = data.draw(queries(index, alphabet, 1))[0]
    max_nodes = data.draw(st.integers(0, 40))
    selection = data.draw(st.sampled_from(SELECTIONS))
    (tree,) = index.lookup_trees([row], max_nodes, selection)
    (expected,) = index.lookup_vectorised(index.prepare([row], max_nodes), selection).trees()
    for field in ("tokens", "parents", "probabilities"):
        assert np.array_equal(getattr(tree, field), getattr(expected, field)), field
        assert getattr(tree, field).dtype == getattr(expected, field).dtype
    assert (tree.context_length, tree.score) == (expected.context_length, expected.score)


@needs(kernel(), EXTENSION)
def test_unplain_sequences_take_the_general_path_and_its_errors(case: tuple[DraftIndex, list[int]]):
    index, _ = case
    stored = index.context_matrix[0, index.width - int(index.context_lengths[0]) :]
    expected = index.lookup([stored.tolist()]).trees()[0]
    for unplain in (tuple(stored.tolist()), stored, [np.int64(t) for t in stored]):  # not a list of ints
        assert np.array_equal(index.lookup_trees([unplain])[0].tokens, expected.tokens)
    with pytest.raises(QueryError, match="token id -1"):
        index.lookup_trees([[-1]])
    with pytest.raises(QueryError, match=str(index.info.vocab_size)):
        index.lookup_trees([[index.info.vocab_size]])


@needs(kernel(), EXTENSION)
def test_arrays_too_short_are_refused(case: tuple[DraftIndex, list[int]]):
    """The kernel checks every length it reads or writes: a ValueError, never a read past an array."""
    index, _ = case
    compiled = index.compiled
    arrays = [compiled.hashes, *compiled.columns]
    with pytest.raises(ValueError, match="shorter than the store"):
        kernel().bind(arrays[0][:-1], *arrays[1:], compiled.sizes, len(compiled.hashes), index.width, 1, 2)
    with pytest.raises(ValueError, match="element size"):
        kernel().bind(*arrays, (3,) * 7, len(compiled.hashes), index.width, 1, 2)
    tails = np.full((2, index.width), 1, np.int64)
    ones = np.ones(2, np.int64)
    outputs = [np.empty(4, np.int32), np.empty(4, np.int32), np.empty(4, np.float32)]
    outputs += [np.empty(3, np.int64), np.empty(2, np.int32), np.empty(2, np.float32)]
    merged = SELECTION_CODES["merged"]
    answer = kernel().answers(compiled.bound, merged, 2, tails, ones, ones * 2, ones, *outputs, 4)
    assert answer == int(np.diff(outputs[3]).sum())
    with pytest.raises(ValueError, match="shorter"):
        kernel().answers(compiled.bound, merged, 2, tails, ones, ones * 2, ones, *outputs, 5)  # room for 5 claimed
    with pytest.raises(ValueError, match="shorter"):
        kernel().answers(compiled.bound, merged, 3, tails, ones, ones * 2, ones, *outputs, 4)  # 3 queries, 2 rows
    with pytest.raises(ValueError, match="outputs shorter"):
        kernel().tree(compiled.bound, merged, [1], 5, 1, index.info.vocab_size, *outputs[:3])  # 5 nodes, room for 4
    with pytest.raises(ValueError, match="bound store"):
        kernel().tree(object(), merged, [1], 4, 1, index.info.vocab_size, *outputs[:3])
