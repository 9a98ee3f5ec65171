"""The small-batch path (up to SMALL_BATCH sequences, plain Python) gives the vectorised path's
answers bit for bit: on randomized batches of stored contexts, extended contexts and misses, with
node and depth limits below and above the trees', both selections, ids on both sides of 16 bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import prepare_queries
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.lookup.small_batch import SMALL_BATCH
from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS, ONE_TREE_SELECTIONS, assert_same_answers, queries


@pytest.fixture(scope="module", params=["big-ids", "edge-ids"])
def case(request: pytest.FixtureRequest, big_id_store: Path, edge_id_store: Path) -> tuple[DraftIndex, list[int]]:
    if request.param == "big-ids":
        return DraftIndex.load(big_id_store), BIG_IDS
    return DraftIndex.load(edge_id_store), EDGE_IDS


@given(data=st.data())
@settings(max_examples=250, deadline=None)
def test_small_batches_answer_as_the_vectorised_path(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    index, alphabet = case
    rows = data.draw(queries(index, alphabet, SMALL_BATCH))
    limits = st.lists(st.integers(0, 10), min_size=len(rows), max_size=len(rows))
    max_nodes, max_depth = data.draw(limits), [min(d, 5) for d in data.draw(limits)]
    selection = data.draw(st.sampled_from(ONE_TREE_SELECTIONS))
    batch = index.prepare(rows, max_nodes, max_depth)
    assert_same_answers(index.small.lookup_batch(batch, selection), index.lookup_vectorised(batch, selection))
    # Scalar limits and Python lists: the small path's own entry, without `prepare`.
    expected = index.lookup_vectorised(index.prepare(rows, max_nodes[0], max_depth[0]), selection)
    assert_same_answers(index.small.lookup(rows, max_nodes[0], max_depth[0], selection), expected)


@given(data=st.data())
@settings(max_examples=100, deadline=None)
def test_small_batches_are_prepared_as_prepare_queries_does(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    index, alphabet = case
    rows = data.draw(queries(index, alphabet, SMALL_BATCH))
    limit = st.integers(0, 50)
    as_given = st.sampled_from([int, list, np.array])  # how callers pass limits: one for all, or one per row
    limits = []
    for _ in range(2):
        values, kind = data.draw(st.lists(limit, min_size=len(rows), max_size=len(rows))), data.draw(as_given)
        limits.append(values[0] if kind is int else kind(values))
    quick = index.small.prepare(rows, *limits)
    full = prepare_queries(rows, *limits, index.width, index.info.vocab_size, default_nodes=index.info.max_nodes)
    for field in ("tails", "lengths", "max_nodes", "max_depth"):
        assert np.array_equal(getattr(quick, field), getattr(full, field)), field
        assert getattr(quick, field).dtype == getattr(full, field).dtype


def test_the_randomized_queries_reach_hits_limits_and_misses(case: tuple[DraftIndex, list[int]]):
    """What the property above covers is not empty: hits, misses, cut trees and pruned depths."""
    index, _ = case
    stored = [index.context_matrix[i, index.width - int(index.context_lengths[i]) :].tolist() for i in range(8)]
    full = index.lookup(stored)
    assert (full.context_lengths > 0).all()
    cut = index.lookup(stored, max_nodes=1, max_depth=1)
    assert (np.diff(cut.offsets) == 1).all() and (np.diff(full.offsets) > 1).any()
    assert index.max_tree_depth > 1 and len(index.lookup(stored, max_depth=1).tokens) < len(full.tokens)
    miss = index.lookup([[12_345] * index.width])  # in neither alphabet
    assert len(miss.tokens) == 0 and miss.context_lengths[0] == 0


def test_numpy_integers_and_bad_input_take_the_checked_route(case: tuple[DraftIndex, list[int]]):
    index, _ = case
    stored = index.context_matrix[0, index.width - int(index.context_lengths[0]) :]
    assert_same_answers(index.lookup([stored]), index.lookup([stored.tolist()]))  # numpy ids: through prepare
    with pytest.raises(ValueError, match="token id -1"):
        index.lookup([[-1]])
