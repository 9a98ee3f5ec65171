"""A brute-force, obviously-correct model of what a store must hold, for checking the SQL."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceTree:
    context_count: int
    tokens: list[int]
    parents: list[int]
    counts: list[int]

    @property
    def expected_accepted(self) -> float:
        return sum(self.counts) / self.context_count


def ngram_counts(documents: list[list[int]], longest: int) -> Counter:
    counts: Counter = Counter()
    for doc in documents:
        for start in range(len(doc)):
            for length in range(1, min(longest, len(doc) - start) + 1):
                counts[tuple(doc[start : start + length])] += 1
    return counts


def reference_trees(
    documents: list[list[int]], max_context: int, max_depth: int, top_c: int, min_count: int, min_probability: float
) -> dict[tuple[int, ...], ReferenceTree]:
    counts = ngram_counts(documents, max_context + max_depth)
    trees = {}
    for context, context_count in counts.items():
        if len(context) > max_context or context_count < min_count:
            continue
        nodes = [
            (gram, count)
            for gram, count in counts.items()
            if len(context) < len(gram) <= len(context) + max_depth
            and gram[: len(context)] == context
            and count >= min_count
            and count >= min_probability * context_count
        ]
        nodes.sort(key=lambda node: (-node[1], len(node[0]), node[0]))
        kept = nodes[:top_c]
        if not kept:
            continue
        index = {gram: i for i, (gram, _) in enumerate(kept)}
        parents = [index.get(gram[:-1], -1) if len(gram) > len(context) + 1 else -1 for gram, _ in kept]
        assert all(p >= 0 for (gram, _), p in zip(kept, parents) if len(gram) > len(context) + 1), "not prefix-closed"
        trees[context] = ReferenceTree(context_count, [g[-1] for g, _ in kept], parents, [c for _, c in kept])
    return trees
