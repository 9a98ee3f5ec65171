"""Back-off trees (sql/06_backoff_*.sql) against a brute-force reference, and what they promise."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore_service.build.draft_trees import PROBABILITY_RESOLUTION
from datastore_service.build.params import BuildParams
from datastore_service.sizes import Budget
from tests.datastore_service.build.test_counting import documents_strategy, sql_trees
from tests.datastore_service.reference import smoothed_reference_trees


def assert_matches_smoothed_reference(documents, params: BuildParams, vocab_size: int) -> None:
    got = sql_trees(documents, params, vocab_size)
    want = smoothed_reference_trees(
        documents,
        params.max_context,
        params.max_depth,
        params.top_c,
        params.min_count,
        params.min_probability,
        params.backoff,
        PROBABILITY_RESOLUTION,
    )
    assert got.keys() == want.keys()
    for context, tree in want.items():
        count, _, tokens, parents, counts = got[context]
        assert (count, tokens, parents, counts) == (tree.context_count, tree.tokens, tree.parents, tree.counts), context


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents=documents_strategy,
    max_context=st.integers(1, 3),
    max_depth=st.integers(1, 4),
    top_c=st.integers(1, 6),
    min_count=st.integers(2, 3),
    min_probability=st.sampled_from([0.0, 0.1]),
    backoff=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
)
def test_backoff_trees_equal_brute_force(documents, max_context, max_depth, top_c, min_count, min_probability, backoff):
    params = BuildParams(
        max_context=max_context,
        max_depth=max_depth,
        top_c=top_c,
        min_count=min_count,
        min_probability=min_probability,
        backoff=backoff,
        budget=Budget(rows=10**9),
    )
    assert_matches_smoothed_reference(documents, params, vocab_size=6)


def test_repeated_tokens_keep_one_node_per_path():
    """With runs of one token, the back-off tree's name for a path (c' + p) can be the n-gram of a
    shorter path under the longer context (c + q): nodes are told apart by depth too."""
    documents = [[1, 1, 1, 2, 1, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1, 2]]
    params = BuildParams(max_context=3, max_depth=4, top_c=12, backoff=1.0, budget=Budget(rows=10**9))
    assert_matches_smoothed_reference(documents, params, vocab_size=4)


def test_a_rare_context_leans_on_its_suffix():
    # (7, 1) is seen twice, each time followed by 5; (1,) is followed by 2 eight times and by 5 twice.
    documents = [[1, 2, 3] * 4 + [7, 1, 5], [1, 2, 3] * 4 + [7, 1, 5, 0]]
    raw = sql_trees(
        documents, BuildParams(max_context=2, max_depth=1, top_c=4, backoff=0.0, budget=Budget(rows=100)), 8
    )
    smoothed = sql_trees(
        documents, BuildParams(max_context=2, max_depth=1, top_c=4, backoff=1.0, budget=Budget(rows=100)), 8
    )
    assert raw[(7, 1)][2] == [5]  # raw counts: the rare context drafts only what it saw
    count, _, tokens, _, counts = smoothed[(7, 1)]
    assert tokens[:2] == [5, 2]  # smoothed: its own continuation first, then its suffix's best
    assert 0 < counts[1] / count < counts[0] / count < 1
