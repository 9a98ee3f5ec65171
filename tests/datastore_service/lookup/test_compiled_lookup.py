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
def test_arrays_too_short_for_the_batch_are_refused(case: tuple[DraftIndex, list[int]]):
    """The kernel checks every length it reads or writes: a ValueError, never a read past an array."""
    index, _ = case
    compiled = index.compiled
    tails = np.full((2, index.width), 1, np.int64)
    ones = np.ones(2, np.int64)
    outputs = [np.empty(4, np.int32), np.empty(4, np.int32), np.empty(4, np.float32)]
    outputs += [np.empty(3, np.int64), np.empty(2, np.int32), np.empty(2, np.float32)]
    arguments = [compiled.hashes, *compiled.columns, compiled.sizes, len(compiled.hashes), index.width]
    arguments += [compiled.seed, compiled.max_tree_depth, 2, tails, ones, ones * 2, ones]
    merged = SELECTION_CODES["merged"]
    assert kernel().answers(merged, *arguments, *outputs, 4) == int(np.diff(outputs[3]).sum())
    with pytest.raises(ValueError, match="shorter"):
        kernel().answers(merged, *arguments, *outputs, 5)  # room for 5 nodes claimed, 4 given
    with pytest.raises(ValueError, match="shorter"):
        kernel().answers(merged, *arguments[:-5], 3, tails, ones, ones * 2, ones, *outputs, 4)  # 3 queries, 2 rows
    with pytest.raises(ValueError, match="element size"):
        kernel().answers(merged, *arguments[:8], (3,) * 7, *arguments[9:], *outputs, 4)
