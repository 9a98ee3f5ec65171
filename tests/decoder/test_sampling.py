"""Speculative sampling keeps the target's distribution (chi-square test on a tiny model)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from decoder.acceptance import SamplingParams
from decoder.node_budget import NodeBudget
from decoder.speculative import SpeculativeDecoder
from decoder.target_model import TargetModel
from tests.decoder.tiny_models import tree

SMALL_VOCAB = 6
PROMPT = [1, 4, 2]
# chi-square critical value for 35 degrees of freedom at p = 0.001
CRITICAL_35 = 66.62


class FixedTreeSource:
    """Always drafts the same tree: tokens 2 and 0 after the context, 3 under 2."""

    max_context = 100

    def drafts(self, contexts, max_nodes):
        return [tree([2, 0, 3], [-1, -1, 0]) for _ in contexts]


def small_target() -> TargetModel:
    torch.manual_seed(4)
    config = LlamaConfig(
        vocab_size=SMALL_VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,  # a whole vector of floats: the engine's ragged pass (and its laid-out logits) serves it
        initializer_range=0.3,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    return TargetModel("small", LlamaForCausalLM(config).eval(), tokenizer=None)


@torch.inference_mode()
def exact_pair_distribution(target: TargetModel, params: SamplingParams) -> np.ndarray:
    first = params.distribution(target.model(torch.tensor([PROMPT])).logits[0, -1]).numpy()
    pairs = np.zeros((SMALL_VOCAB, SMALL_VOCAB))
    for a in range(SMALL_VOCAB):
        second = params.distribution(target.model(torch.tensor([PROMPT + [a]])).logits[0, -1]).numpy()
        pairs[a] = first[a] * second
    return pairs


def chi_square(samples: Counter, expected: np.ndarray, total: int) -> float:
    observed = np.zeros_like(expected)
    for (a, b), count in samples.items():
        observed[a, b] = count
    expected_counts = expected * total
    return float(((observed - expected_counts) ** 2 / np.maximum(expected_counts, 1e-9)).sum())


def sample_pairs(target: TargetModel, params: SamplingParams, runs: int, accept_everything: bool = False) -> Counter:
    decoder = SpeculativeDecoder(target, FixedTreeSource(), NodeBudget(8), sampling=params, seed=123)
    if accept_everything:  # a broken rule, to show the test can tell
        decoder.sampling = SamplingParams(temperature=1e-6)
    return Counter(tuple(decoder.generate(PROMPT, 2).tokens) for _ in range(runs))


def test_sampling_matches_the_target_distribution():
    target = small_target()
    params = SamplingParams(temperature=1.0)
    expected = exact_pair_distribution(target, params)
    runs = 4000
    statistic = chi_square(sample_pairs(target, params, runs), expected, runs)
    assert statistic < CRITICAL_35, statistic


def test_the_chi_square_test_catches_a_biased_sampler():
    target = small_target()
    expected = exact_pair_distribution(target, SamplingParams(temperature=1.0))
    runs = 1500
    statistic = chi_square(sample_pairs(target, SamplingParams(), runs, accept_everything=True), expected, runs)
    assert statistic > CRITICAL_35


def test_top_p_keeps_the_nucleus_only():
    logits = torch.tensor([3.0, 2.0, 1.0, -5.0])
    probabilities = SamplingParams(top_p=0.8).distribution(logits)
    assert probabilities[3] == 0 and probabilities[2] == 0 and abs(float(probabilities.sum()) - 1) < 1e-9
