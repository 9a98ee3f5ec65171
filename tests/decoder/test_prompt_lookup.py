"""Prompt lookup finds the same matches as a plain scan of every window of the history."""

from __future__ import annotations

import numpy as np

from decoder.prompt_lookup import prompt_lookup_tree


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
