"""The SQL pipeline (counts, top-c trees, ranking) against a brute-force reference."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore_service.build.compact_table import rank_draft_trees
from datastore_service.build.ngram_counting import token_bits
from datastore_service.build.params import BuildParams
from datastore_service.sizes import Budget
from tests.datastore_service.reference import ngram_counts, reference_trees


def sql_trees(documents: list[list[int]], params: BuildParams, vocab_size: int) -> dict:
    connection = duckdb.connect()
    lengths = [len(doc) for doc in documents]
    tokens = pa.table(  # noqa: F841 (read by the CREATE TABLE below, by name)
        {
            "doc_id": np.repeat(np.arange(len(documents), dtype=np.int32), lengths),
            "pos": np.arange(sum(lengths), dtype=np.int64),
            "token": np.array([t for doc in documents for t in doc], dtype=np.int32),
        }
    )
    connection.execute("CREATE TABLE tokens AS SELECT * FROM tokens")
    candidates = rank_draft_trees(connection, params, vocab_size, progress=False)
    rows = connection.execute(
        "SELECT context, context_count, expected_accepted, tokens, parents, counts FROM compact_drafts"
    ).fetchall()
    assert len(rows) == candidates
    return {
        tuple(context): (count, expected, tokens, parents, counts)
        for context, count, expected, tokens, parents, counts in rows
    }


def assert_matches_reference(documents, params: BuildParams, vocab_size: int) -> None:
    got = sql_trees(documents, params, vocab_size)
    want = reference_trees(
        documents, params.max_context, params.max_depth, params.top_c, params.min_count, params.min_probability
    )
    assert got.keys() == want.keys()
    for context, tree in want.items():
        count, expected, tokens, parents, counts = got[context]
        assert (count, tokens, parents, counts) == (tree.context_count, tree.tokens, tree.parents, tree.counts), context
        assert expected == pytest.approx(tree.expected_accepted, rel=1e-6)


documents_strategy = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=40), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents=documents_strategy,
    max_context=st.integers(1, 3),
    max_depth=st.integers(1, 4),
    top_c=st.integers(1, 6),
    min_count=st.integers(2, 3),
    min_probability=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_trees_equal_brute_force(documents, max_context, max_depth, top_c, min_count, min_probability):
    params = BuildParams(
        max_context=max_context,
        max_depth=max_depth,
        top_c=top_c,
        min_count=min_count,
        min_probability=min_probability,
        backoff=0.0,
        budget=Budget(rows=10**9),
    )
    assert_matches_reference(documents, params, vocab_size=6)


def test_token_ids_above_16_bits_are_exact():
    """Gemma-3 has 262,144 ids: keys must carry 18-bit tokens without truncation or collision."""
    rng = np.random.default_rng(7)
    alphabet = [0, 65_535, 65_536, 131_071, 200_000, 262_143]
    documents = [[int(t) for t in rng.choice(alphabet, size=300)] for _ in range(3)]
    assert token_bits(262_144) == 18
    params = BuildParams(max_context=2, max_depth=3, top_c=8, backoff=0.0, budget=Budget(rows=10**9))
    assert_matches_reference(documents, params, vocab_size=262_144)
    got = sql_trees(documents, params, 262_144)
    assert {t for tree in got.values() for t in tree[2]} >= {65_536, 262_143}


def test_ties_break_by_depth_then_token_sequence():
    # After context (1,): continuations 5 and 3 each seen twice, and 3 4 twice: equal counts.
    documents = [[1, 5, 9, 1, 5, 8, 1, 3, 4, 1, 3, 4]]
    params = BuildParams(max_context=1, max_depth=2, top_c=10, backoff=0.0, budget=Budget(rows=100))
    got = sql_trees(documents, params, vocab_size=10)
    count, _, tokens, parents, counts = got[(1,)]
    # depth 1 first (3 before 5: token order), then depth 2 (3 4)
    assert (count, tokens, parents, counts) == (4, [3, 5, 4], [-1, -1, 0], [2, 2, 2])


def test_ngram_counts_stay_inside_documents():
    counts = ngram_counts([[1, 2], [3, 4]], longest=3)
    assert (2, 3) not in counts and counts[(1, 2)] == 1
    got = sql_trees(
        [[1, 2, 1, 2], [1, 2]], BuildParams(max_context=1, max_depth=2, backoff=0.0, budget=Budget(rows=10)), 3
    )
    # (1,) occurs 3 times, (1, 2) 3 times; (2,) is followed by 1 only once: no tree for (2,)
    assert got[(1,)][0] == 3 and got[(1,)][2] == [2] and (2,) not in got
