"""Prompt lookup finds the same matches as a plain scan of every window of the history, and its
compiled merge with a stored tree equals the Python rule bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore_service.draft import DraftTree
from decoder.prompt_lookup import _prompt_lookup, _tree_from_paths, prompt_lookup_tree, with_prompt_lookup
from tests.extensions import assert_built, needs


def scanned_tree_paths(history: list[int], sizes=(4, 3, 2), max_depth=8, max_matches=8) -> dict[tuple, float]:
    """The oracle: every earlier window compared with the newest n tokens, most recent first."""
    for n in sizes:
        if len(history) <= n:
            continue
        suffix = history[-n:]
        starts = [i + n for i in range(len(history) - n - 1, -1, -1) if history[i : i + n] == suffix][:max_matches]
        if not starts:
            continue
        counts: dict[tuple, int] = {}
        for start in starts:
            continuation = tuple(history[start : start + max_depth])
            for depth in range(1, len(continuation) + 1):
                counts[continuation[:depth]] = counts.get(continuation[:depth], 0) + 1
        return {path: count / len(starts) for path, count in counts.items()}
    return {}


def tree_paths(history: list[int]) -> dict[tuple, float]:
    tree = prompt_lookup_tree(np.asarray(history, np.int64))
    paths: list[tuple] = []
    result = {}
    for token, parent, probability in zip(tree.tokens.tolist(), tree.parents.tolist(), tree.probabilities.tolist()):
        paths.append((paths[parent] if parent >= 0 else ()) + (token,))
        result[paths[-1]] = probability
    return result


def test_prompt_lookup_matches_a_scan_of_every_window():
    rng = np.random.default_rng(7)
    for length in [0, 1, 2, 3, 4, 5, 6, 9, 40, 300]:
        for vocabulary in (2, 3, 6):
            history = rng.integers(0, vocabulary, length).tolist()
            expected = scanned_tree_paths(history)
            found = tree_paths(history)
            assert found.keys() == expected.keys(), (history, found, expected)
            for path, probability in expected.items():
                assert abs(found[path] - probability) < 1e-6


def random_tree(rng: np.random.Generator, vocabulary: int, nodes: int) -> DraftTree:
    """A valid best-first tree over a small vocabulary, so its paths meet prompt lookup's often."""
    probabilities: dict[tuple, float] = {}
    for _ in range(nodes):
        parents = [()] + [p for p in probabilities if len(p) < 6]
        parent = parents[int(rng.integers(len(parents)))]
        path = parent + (int(rng.integers(vocabulary)),)
        if path not in probabilities:
            ceiling = probabilities.get(parent, 1.0)
            probabilities[path] = float(np.float32(ceiling * rng.uniform(0.05, 1.0)))
    return _tree_from_paths(probabilities, context_length=int(rng.integers(1, 4)) if probabilities else 0)


@needs(_prompt_lookup, "decoder._prompt_lookup")
@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(0, 300),
    vocabulary=st.integers(2, 8),
    stored=st.integers(0, 40),
)
def test_the_compiled_merge_equals_the_python_rule(seed, length, vocabulary, stored):
    rng = np.random.default_rng(seed)
    history = rng.integers(0, vocabulary, length).astype(np.int64)
    tree = random_tree(rng, vocabulary, stored)
    compiled = with_prompt_lookup(tree, history)
    expected = with_prompt_lookup(tree, history, compiled=False)
    from_list = with_prompt_lookup(tree, history.tolist())  # a decode loop's history, read as it is
    assert np.array_equal(from_list.tokens, compiled.tokens) and from_list.score == compiled.score
    assert compiled.context_length == expected.context_length
    assert compiled.score == expected.score
    for field in ("tokens", "parents", "probabilities"):
        a, e = getattr(compiled, field), getattr(expected, field)
        assert a.dtype == e.dtype and np.array_equal(a, e), field
    compiled.check_integrity()


def test_the_install_builds_the_prompt_lookup_kernel():
    assert_built(_prompt_lookup, "decoder._prompt_lookup")


@needs(_prompt_lookup, "decoder._prompt_lookup")
def test_the_compiled_merge_refuses_a_stored_tree_whose_parents_do_not_precede_their_children():
    history = np.array([1, 2, 3, 1, 2, 3, 1, 2], np.int64)  # the newest tokens recur: prompt lookup drafts
    broken = DraftTree(np.array([5, 6], np.int32), np.array([1, -1], np.int32), np.full(2, 0.5, np.float32), 2, 1.0)
    with pytest.raises(ValueError, match="parent"):
        with_prompt_lookup(broken, history)
