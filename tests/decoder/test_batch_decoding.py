"""Batched speculative decoding: each sequence's output equals its own plain greedy output."""

from __future__ import annotations

import pytest

from decoder.batch_decoding import BatchDecoder
from decoder.draft_sources import NoDrafts
from decoder.node_budget import NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from tests.decoder.tiny_models import plain_greedy, tiny_gpt2, tiny_llama, tree

PROMPTS = [[5, 9, 2, 33, 17, 8, 40, 1], [3, 3, 3], [10, 20, 30, 40, 50, 60, 10, 20, 30, 40, 50], [7]]


class BatchOracle:
    """Per sequence, drafts the true continuation (different depths per sequence) plus a wrong branch."""

    max_context = 10_000

    def __init__(self, references: dict[tuple[int, ...], list[int]]) -> None:
        self.references = references

    def drafts(self, contexts, max_nodes):
        trees = []
        for context in contexts:
            for prompt, reference in self.references.items():
                if (
                    tuple(context[: len(prompt)]) == prompt
                    and context[len(prompt) :] == reference[: len(context) - len(prompt)]
                ):
                    truth = reference[len(context) - len(prompt) :]
                    depth = 1 + len(prompt) % 4
                    chain = truth[:depth]
                    bad = (truth[0] + 1) % 64 if truth else 0
                    trees.append(
                        tree([bad] + chain, [-1] + [-1] + list(range(1, len(chain)))) if truth else tree([], [])
                    )
                    break
        return trees


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("max_new_tokens", [1, 9, 30])
def test_batch_equals_each_sequence_alone(make, max_new_tokens: int):
    target = make()
    references = {tuple(p): plain_greedy(target, p, max_new_tokens) for p in PROMPTS}
    for source in (BatchOracle(references), NoDrafts(), WithPromptLookup(NoDrafts())):
        generations = BatchDecoder(target, source, NodeBudget(16)).generate(PROMPTS, max_new_tokens)
        for prompt, generation in zip(PROMPTS, generations):
            assert generation.tokens == references[tuple(prompt)], (type(source).__name__, prompt)
    oracle = BatchDecoder(target, BatchOracle(references), NodeBudget(16)).generate(PROMPTS, max_new_tokens)
    if max_new_tokens > 9:
        assert all(g.mean_accepted_length > 1.2 for g in oracle)
