"""The compiled learning-store answer (merged_answer.c) against the numpy rule it compiles: the same
trees, bit for bit, for LONGEST_MATCH and MERGED, whatever the queries' lengths and limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.build.params import BuildParams
from datastore_service.draft import DraftBatch
from datastore_service.lookup.index_loader import load_index
from datastore_service.overlay.compiled_answer import kernel, learned_answers
from datastore_service.overlay.overlay import Overlay
from datastore_service.overlay.trees import answer_in_numpy
from datastore_service.sizes import Budget
from tests.datastore_service.store_factory import publish_token_store
from tests.extensions import assert_built, needs

EXTENSION = "datastore_service.overlay._merged_answer"

PARAMS = BuildParams(max_context=3, max_depth=4, top_c=10, min_count=2, budget=Budget(rows=10**9))


@pytest.fixture(scope="module")
def learning(tmp_path_factory):
    """A store over tokens 0..39 and an overlay that learned sequences over 0..59 (its own n-grams too)."""
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 40, 400).tolist() for _ in range(5)]
    index = load_index(publish_token_store(tmp_path_factory.mktemp("s") / "s.duckdb", documents, 500, PARAMS))
    overlay = Overlay(None, index)
    overlay.observe([rng.integers(0, 60, int(rng.integers(5, 300))).astype(np.int32) for _ in range(40)])
    overlay.refresh()
    return index, overlay


def assert_same(actual: DraftBatch, expected: DraftBatch) -> None:
    for field in DraftBatch.__dataclass_fields__:
        a, e = getattr(actual, field), getattr(expected, field)
        assert a.dtype == e.dtype and np.array_equal(a, e), field


def test_the_install_builds_the_kernel():
    assert_built(kernel(), EXTENSION)


@needs(kernel(), EXTENSION)
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    queries=st.integers(1, 80),
    max_nodes=st.integers(1, 24),
    max_depth=st.integers(1, 5),
    selection=st.sampled_from(["longest", "merged"]),
)
def test_the_kernel_answers_exactly_as_the_numpy_rule(learning, seed, queries, max_nodes, max_depth, selection):
    index, overlay = learning
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(0, 60, int(rng.integers(1, 4))).tolist() for _ in range(queries)]
    nodes = rng.integers(1, max_nodes + 1, queries)  # limits differ per query, as a batch's may
    batch = index.prepare(sequences, nodes.tolist(), max_depth)
    static = index.lookup_batch(batch, selection)
    view = overlay.trees.view
    compiled = learned_answers(view, batch, static, merge=selection == "merged")
    expected = answer_in_numpy(view, batch, static, selection)
    if compiled is None:  # no learned tree taken: the answer is the store's own
        assert expected is static
    else:
        assert_same(compiled, expected)
        for tree in compiled.trees():
            tree.check_integrity()


@needs(kernel(), EXTENSION)
def test_learned_trees_are_taken_and_merged_in_the_cases_checked(learning):
    """The property above compares something: learned trees replace and merge with the store's."""
    index, overlay = learning
    rng = np.random.default_rng(1)
    batch = index.prepare([rng.integers(0, 60, 3).tolist() for _ in range(200)], 12, 0)
    static = index.lookup_batch(batch, "merged")
    merged = learned_answers(overlay.trees.view, batch, static, merge=True)
    longest = learned_answers(overlay.trees.view, batch, static, merge=False)
    assert merged is not None and longest is not None
    replaced = [a.tokens.tolist() != s.tokens.tolist() for a, s in zip(longest.trees(), static.trees())]
    grown = [len(m) > len(a) for m, a in zip(merged.trees(), longest.trees())]
    assert sum(replaced) > 20 and sum(grown) > 20
