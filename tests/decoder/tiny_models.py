"""Tiny random target models for fast, exact tests of the verifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from datastore_service.draft import DraftTree
from decoder.target_model import TargetModel

VOCAB = 64


def tiny_llama(seed: int = 0) -> TargetModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,  # a whole vector of floats, as the ragged attention kernel reads heads
        max_position_embeddings=512,
        initializer_range=0.5,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    return TargetModel("tiny-llama", LlamaForCausalLM(config).eval(), tokenizer=None)


def tiny_gpt2(seed: int = 0) -> TargetModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=512,
        initializer_range=0.5,
        eos_token_id=None,
        bos_token_id=None,
    )
    return TargetModel("tiny-gpt2", GPT2LMHeadModel(config).eval(), tokenizer=None)


@torch.inference_mode()
def plain_greedy(target: TargetModel, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    output = target.model.generate(
        torch.tensor([list(prompt)]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
    )
    return output[0, len(prompt) :].tolist()


def tree(tokens: Sequence[int], parents: Sequence[int]) -> DraftTree:
    probabilities = np.linspace(0.9, 0.1, len(tokens)).astype(np.float32) if len(tokens) else np.empty(0, np.float32)
    # keep children no likelier than parents
    for i, parent in enumerate(parents):
        if parent >= 0:
            probabilities[i] = min(probabilities[i], probabilities[parent])
    return DraftTree(
        np.asarray(tokens, np.int32),
        np.asarray(parents, np.int32),
        probabilities,
        1 if len(tokens) else 0,
        float(probabilities.sum()),
    )


class OracleSource:
    """Drafts built from the known greedy continuation, in a chosen tree shape."""

    max_context = 10_000

    def __init__(self, prompt_length: int, reference: list[int], shape: str, rng_seed: int = 0) -> None:
        self.prompt_length, self.reference, self.shape = prompt_length, reference, shape
        self.rng = np.random.default_rng(rng_seed)

    def drafts(self, contexts, max_nodes: int) -> list[DraftTree]:
        done = len(contexts[0]) - self.prompt_length
        truth = self.reference[done:]

        def wrong(t: int | None) -> int:
            return (t + 1 + int(self.rng.integers(0, VOCAB - 1))) % VOCAB if t is not None else 0

        if self.shape == "empty" or not truth:
            return [DraftTree.empty()]
        if self.shape == "chain":  # the true continuation, 5 deep
            chain = truth[:5]
            return [tree(chain, list(range(-1, len(chain) - 1)))]
        if self.shape == "wide":  # 6 siblings, the true token last
            first = [wrong(truth[0]) for _ in range(5)]
            tokens = list(dict.fromkeys(t for t in first if t != truth[0]))[:5] + [truth[0]]
            return [tree(tokens, [-1] * len(tokens))]
        if self.shape == "deep":  # 2 true tokens, then a wrong one, then more under it
            chain = truth[:2] + [wrong(truth[2] if len(truth) > 2 else None)] + [3, 4, 5]
            return [tree(chain, list(range(-1, len(chain) - 1)))]
        if self.shape == "branchy":  # a wrong branch first, the true chain second, interleaved
            bad = wrong(truth[0])
            tokens, parents = [bad, truth[0], 7], [-1, -1, 0]
            for depth, token in enumerate(truth[1:4]):
                tokens.append(token)
                parents.append(1 if depth == 0 else len(tokens) - 2)
            return [tree(tokens, parents)]
        if self.shape == "long":  # far longer than the tokens left
            chain = truth + [1, 2, 3] * 10
            return [tree(chain, list(range(-1, len(chain) - 1)))]
        raise ValueError(self.shape)


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
