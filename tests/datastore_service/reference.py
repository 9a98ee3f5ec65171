"""A brute-force, obviously-correct model of what a store must hold, for checking the SQL."""

from __future__ import annotations

import math
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


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)  # DuckDB's round(), not Python's round-half-to-even


def smoothed_reference_trees(
    documents: list[list[int]],
    max_context: int,
    max_depth: int,
    top_c: int,
    min_count: int,
    min_probability: float,
    strength: float,
    resolution: int,
) -> dict[tuple[int, ...], ReferenceTree]:
    """Back-off trees spelled out: each context's tree is the top_c likeliest paths of
    w * count(c p) / count(c) + (1 - w) * P(p | c[1:]), w = count(c) / (count(c) + strength * kinds(c)),
    from the empty context up; stored as counts over a power-of-two-scaled effective count."""
    frequent = {gram: n for gram, n in ngram_counts(documents, max_context + max_depth).items() if n >= min_count}
    counted_tokens = sum(n for gram, n in frequent.items() if len(gram) == 1)

    def ranked(nodes: dict) -> dict:
        # ties: shallower first, then by the realizing n-gram (length, then tokens)
        order = sorted(nodes.items(), key=lambda item: (-item[1][0], len(item[0]), len(item[1][1]), item[1][1]))
        return dict(order[:top_c])

    # each tree: path -> (probability, the n-gram realizing the node)
    trees: dict[tuple[int, ...], dict] = {
        (): ranked({gram: (n / counted_tokens, gram) for gram, n in frequent.items() if len(gram) <= max_depth})
    }
    stored = {}
    for length in range(1, max_context + 1):
        for context, context_count in sorted(frequent.items()):
            children = [n for gram, n in frequent.items() if len(gram) == length + 1 and gram[:length] == context]
            if len(context) != length or not children:
                continue
            effective = context_count + strength * (len(children) + context_count - sum(children))
            weight = context_count / effective
            candidates = {}
            for path, (probability, realized) in trees.get(context[1:], {}).items():
                own = frequent.get(context + path, 0)
                mixed = weight * own / context_count + (1 - weight) * probability
                candidates[path] = (mixed, context + path if own else realized)
            for gram, n in frequent.items():
                path = gram[length:]
                if gram[:length] == context and 1 <= len(path) <= max_depth and path not in candidates:
                    candidates[path] = (weight * n / context_count, gram)
            tree = ranked({p: v for p, v in candidates.items() if v[0] > 0 and v[0] >= min_probability})
            trees[context] = tree
            if not tree:
                continue
            scale = 1 if strength == 0 else 2 ** max(0, math.ceil(math.log2(resolution / effective)))
            denominator = context_count if strength == 0 else _round_half_up(effective * scale)
            paths = list(tree)
            stored[context] = ReferenceTree(
                denominator,
                [path[-1] for path in paths],
                [paths.index(path[:-1]) if len(path) > 1 else -1 for path in paths],
                [max(1, _round_half_up(probability * denominator)) for probability, _ in tree.values()],
            )
    return stored
