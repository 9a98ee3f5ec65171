"""The authors' CREST rebuilt: REST's cut of a draft tree, and the storage counted as they keep it."""

from __future__ import annotations

import numpy as np

from crest_cli.evaluation.authors_crest import cut_to_choices, pickled_bytes
from datastore_service.draft import DraftTree


def tree(tokens: list[int], parents: list[int], counts: list[int]) -> DraftTree:
    probabilities = np.array(counts, np.float32) / 10
    return DraftTree(
        np.array(tokens, np.int32), np.array(parents, np.int32), probabilities, 2, float(probabilities.sum())
    )


def test_cut_drops_the_paths_with_most_distinct_tokens_first():
    # paths: (1) (2) (1 3) (1 3 4) (2 5); distinct tokens per path 1 1 2 3 2, 9 in all
    full = tree([1, 2, 3, 4, 5], [-1, -1, 0, 2, 1], [6, 4, 5, 3, 2])
    cut = cut_to_choices(full, choices=5)
    # (1 3 4) goes first (3), then of the two with 2 the less frequent (2 5): 4 left, within 5
    assert cut.tokens.tolist() == [1, 2, 3] and cut.parents.tolist() == [-1, -1, 0]
    cut.check_integrity()
    assert cut_to_choices(full, choices=9).tokens.tolist() == full.tokens.tolist()


def test_cut_counts_a_repeated_token_once():
    # (7) (7 7) (7 7 7) (8): one distinct token each; of equals the less frequent goes first
    full = tree([7, 7, 7, 8], [-1, 0, 1, -1], [5, 4, 3, 1])
    cut = cut_to_choices(full, choices=3)
    assert cut.tokens.tolist() == [7, 7, 7] and cut.parents.tolist() == [-1, 0, 1]
    cut.check_integrity()


def test_pickled_trees_grow_with_their_paths():
    small = tree([1], [-1], [5])
    large = tree(list(range(1, 41)), [-1] + list(range(39)), list(range(40, 0, -1)))
    assert 0 < pickled_bytes(small) < pickled_bytes(large)
