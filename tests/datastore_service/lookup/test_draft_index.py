"""The index against direct SQL on the same store file, through both paths (vectorised batches and
single sequences)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datastore_service.draft import QueryError
from datastore_service.lookup.draft_index import DraftIndex
from tests.datastore_service.lookup.stores import BIG_IDS, assert_same_answers
from tests.datastore_service.sql_oracle import sql_answer


@pytest.fixture(scope="module")
def store(big_id_store: Path) -> Path:
    return big_id_store


@pytest.fixture(scope="module")
def index(store: Path) -> DraftIndex:
    return DraftIndex.load(store)


@pytest.mark.parametrize("selection", ["scored", "longest"])
@pytest.mark.parametrize(("max_nodes", "max_depth"), [(8, 1024), (3, 1024), (8, 2), (5, 1)])
def test_lookup_equals_sql(store: Path, index: DraftIndex, selection: str, max_nodes: int, max_depth: int):
    rng = np.random.default_rng(max_nodes * 10 + max_depth)
    queries = [[int(t) for t in rng.choice(BIG_IDS + [12_345], size=rng.integers(1, 4))] for _ in range(60)]
    batch = index.lookup(queries, max_nodes=max_nodes, max_depth=max_depth, selection=selection)
    matched = 0
    for query, tree in zip(queries, batch.trees()):
        alone = index.lookup([query], max_nodes=max_nodes, max_depth=max_depth, selection=selection)
        assert_same_answers(alone, index.lookup_vectorised(index.prepare([query], max_nodes, max_depth), selection))
        tree.check_integrity()
        length, nodes = sql_answer(store, query, max_nodes, max_depth, selection)
        assert tree.context_length == length, query
        assert tree.tokens.tolist() == [n[0] for n in nodes]
        assert tree.parents.tolist() == [n[1] for n in nodes]
        assert np.allclose(tree.probabilities, [n[2] for n in nodes], rtol=1e-6)
        matched += length > 0
    assert matched > 30  # the test exercised real matches, not only empty drafts


def test_ids_above_16_bits_round_trip(index: DraftIndex):
    assert index.node_tokens.dtype == np.uint32 and index.context_matrix.dtype == np.uint32
    drafted = set(index.node_tokens.tolist()) | set(index.context_matrix[index.context_matrix >= 0].tolist())
    assert {65_536, 131_071, 200_000, 262_143} <= drafted
    tree = index.lookup([[262_143]]).tree(0)
    assert tree.context_length == 1


def test_unknown_context_gives_an_empty_draft(index: DraftIndex):
    tree = index.lookup([[12_345, 12_345]]).tree(0)
    assert len(tree) == 0 and tree.context_length == 0 and tree.score == 0


@pytest.mark.parametrize(
    ("queries", "kwargs", "message"),
    [
        ([], {}, "empty batch"),
        ([[]], {}, "sequence 0: no tokens"),
        ([[1, 2, 3, 4]], {}, "4 tokens; this store matches at most 3"),
        ([[1], [-1]], {}, "sequence 1: token id -1"),
        ([[262_144]], {}, "token id 262144 is outside"),
        ([[1]], {"max_nodes": 10**6}, "max_nodes 1000000 outside"),
        ([[1]], {"max_depth": -2}, "max_depth -2 outside"),
        ([[1]] * 5000, {}, "exceeds the limit"),
        ([[1]], {"selection": "random"}, "unknown selection"),
    ],
)
def test_bad_queries_are_refused_precisely(index: DraftIndex, queries, kwargs, message):
    with pytest.raises(QueryError, match=message):
        index.lookup(queries, **kwargs)
