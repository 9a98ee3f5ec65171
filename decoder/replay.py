"""Accepted length without running the target: replay its greedy output against a draft source.

Greedy speculative decoding is lossless, so the tokens it emits are the target's plain greedy
output R whatever the drafts. At a step with k tokens emitted, the draft tree is verified against
R[k:]: the accepted nodes are the longest root path whose tokens equal R[k], R[k+1], ...; then
one bonus token follows. Replaying a cached R therefore gives exactly the steps real decoding
would take with the same source and node budget, at the cost of lookups only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datastore_service.draft import DraftTree

from .draft_sources import DraftSource
from .node_budget import NodeBudget
from .speculative import limit_depth


@dataclass(frozen=True)
class Replay:
    tokens: int
    steps: int  # target forwards after the prefill
    drafted: int  # nodes verified over all steps

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per target forward, the prefill included (as Generation reports it)."""
        return self.tokens / (self.steps + 1)


def matched_path_length(tree: DraftTree, expected: Sequence[int]) -> int:
    """How many tokens of `expected` the tree drafts along one root path."""
    children: dict[int, dict[int, int]] = {}
    for index, (token, parent) in enumerate(zip(tree.tokens.tolist(), tree.parents.tolist())):
        children.setdefault(parent, {}).setdefault(token, index)
    node, length = -1, 0
    while length < len(expected):
        node = children.get(node, {}).get(expected[length], None)
        if node is None:
            break
        length += 1
    return length


def replay(
    source: DraftSource, budget: NodeBudget, prompt: Sequence[int], reference: Sequence[int], max_new_tokens: int
) -> Replay:
    reference = list(reference[:max_new_tokens])
    history = list(prompt) + reference[:1]
    emitted, steps, drafted = min(1, len(reference)), 0, 0
    while emitted < len(reference):
        tree = source.drafts([history[-source.max_context :]], budget.max_nodes)[0]
        tree = budget.cut(limit_depth(tree, max_new_tokens - emitted - 1))
        accepted = matched_path_length(tree, reference[emitted:])
        advance = min(accepted + 1, len(reference) - emitted)
        history.extend(reference[emitted : emitted + advance])
        emitted += advance
        steps += 1
        drafted += len(tree)
    return Replay(tokens=len(reference), steps=steps, drafted=drafted)
