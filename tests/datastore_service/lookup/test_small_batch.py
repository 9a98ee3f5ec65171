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
from datastore_service.lookup.draft_index import SELECTIONS, DraftIndex
from datastore_service.lookup.small_batch import SMALL_BATCH
from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS, assert_same_answers


@pytest.fixture(scope="module", params=["big-ids", "edge-ids"])
def case(request: pytest.FixtureRequest, big_id_store: Path, edge_id_store: Path) -> tuple[DraftIndex, list[int]]:
    if request.param == "big-ids":
        return DraftIndex.load(big_id_store), BIG_IDS
    return DraftIndex.load(edge_id_store), EDGE_IDS


@st.composite
def sequences(draw: st.DrawFn, index: DraftIndex, alphabet: list[int]) -> list[list[int]]:
    """Stored contexts (hits), stored contexts behind other tokens, and random ones (mostly misses)."""
    ids = st.sampled_from(alphabet) | st.integers(0, index.info.vocab_size - 1)
    rows = []
    for _ in range(draw(st.integers(1, SMALL_BATCH))):
        kind = draw(st.sampled_from(["stored", "extended", "random"]))
        if kind == "random":
            rows.append(draw(st.lists(ids, min_size=1, max_size=index.width)))
            continue
        stored = draw(st.integers(0, len(index.context_hashes) - 1))
        context = index.context_matrix[stored, index.width - int(index.context_lengths[stored]) :].tolist()
        before = draw(st.lists(ids, max_size=index.width)) if kind == "extended" else []
        rows.append((before + context)[-index.width :])
    return rows


@given(data=st.data())
@settings(max_examples=250, deadline=None)
def test_small_batches_answer_as_the_vectorised_path(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    index, alphabet = case
    rows = data.draw(sequences(index, alphabet))
    limits = st.lists(st.integers(0, 10), min_size=len(rows), max_size=len(rows))
    max_nodes, max_depth = data.draw(limits), [min(d, 5) for d in data.draw(limits)]
    selection = data.draw(st.sampled_from(SELECTIONS))
    batch = index.prepare(rows, max_nodes, max_depth)
    assert_same_answers(index.lookup_batch(batch, selection), index.lookup_vectorised(batch, selection))
    # Scalar limits and Python lists: `lookup` takes them to the small path without `prepare`.
    expected = index.lookup_vectorised(index.prepare(rows, max_nodes[0], max_depth[0]), selection)
    assert_same_answers(index.lookup(rows, max_nodes[0], max_depth[0], selection), expected)


@given(data=st.data())
@settings(max_examples=100, deadline=None)
def test_small_batches_are_prepared_as_prepare_queries_does(case: tuple[DraftIndex, list[int]], data: st.DataObject):
    index, alphabet = case
    rows = data.draw(sequences(index, alphabet))
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
