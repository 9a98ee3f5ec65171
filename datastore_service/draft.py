"""The draft tree: the one type every part of CREST passes around.

A draft is parallel arrays, best node first: `tokens[i]` is drafted after the path to
`parents[i]` (-1 = directly after the context), with corpus probability `probabilities[i]` that
the path to node i follows the context. Parents precede children, so every prefix is a tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DraftTree:
    tokens: np.ndarray          # int32 [n]
    parents: np.ndarray         # int32 [n]; -1 = the context
    probabilities: np.ndarray   # float32 [n]
    context_length: int         # length of the matched stored context; 0 = no match
    score: float                # expected accepted draft tokens = probabilities.sum()

    @classmethod
    def empty(cls) -> "DraftTree":
        return cls(np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32), 0, 0.0)

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> np.ndarray:
        """Depth of each node (1 = right after the context)."""
        depths = np.zeros(len(self), np.int32)
        for i, parent in enumerate(self.parents):
            depths[i] = 1 if parent < 0 else depths[parent] + 1
        return depths

    def check_integrity(self) -> None:
        """Raise AssertionError unless the arrays form a valid, best-first, prefix-closed tree."""
        n = len(self)
        assert len(self.parents) == n and len(self.probabilities) == n, "arrays differ in length"
        assert np.all(self.parents < np.arange(n)), "a parent must precede its child"
        assert np.all(self.parents >= -1), "parent index below -1"
        assert np.all((self.probabilities > 0) & (self.probabilities <= 1.0 + 1e-6)), "probability outside (0, 1]"
        with_parent = self.parents >= 0
        assert np.all(self.probabilities[with_parent] <= self.probabilities[self.parents[with_parent]] + 1e-6), (
            "a node is likelier than its parent"
        )
        siblings = set(zip(self.parents.tolist(), self.tokens.tolist()))
        assert len(siblings) == n, "two siblings draft the same token"
        assert n == 0 or self.context_length > 0, "nodes without a matched context"
        assert abs(float(self.probabilities.sum()) - self.score) <= 1e-3 * max(1.0, self.score), "score != sum"
