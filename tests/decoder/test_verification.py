"""The verifier is lossless: greedy speculative decoding equals plain greedy decoding, for every
tree shape, on tiny random Llama and GPT-2 models."""

from __future__ import annotations

import pytest
import torch

from datastore_service.draft import DraftTree
from decoder.draft_sources import NoDrafts
from decoder.hf_compat import new_dynamic_cache, with_cache
from decoder.node_budget import NodeBudget
from decoder.speculative import SpeculativeDecoder, limit_depth
from decoder.tree_attention import tree_inputs
from tests.decoder.tiny_models import OracleSource, plain_greedy, tiny_gpt2, tiny_llama, tree

SHAPES = ["empty", "chain", "wide", "deep", "branchy", "long"]
PROMPT = [5, 9, 2, 33, 17, 8, 40, 1]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def target(request):
    return tiny_llama() if request.param == "llama" else tiny_gpt2()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_new_tokens", [1, 7, 40])
def test_greedy_equals_plain_greedy(target, shape: str, max_new_tokens: int):
    reference = plain_greedy(target, PROMPT, max_new_tokens)
    source = OracleSource(len(PROMPT), reference, shape)
    generation = SpeculativeDecoder(target, source, NodeBudget(max_nodes=64)).generate(PROMPT, max_new_tokens)
    assert generation.tokens == reference
    accepted = sum(step.accepted for step in generation.steps)
    if shape in ("chain", "long", "branchy") and max_new_tokens > 7:
        assert accepted > 0 and generation.mean_accepted_length > 1.5  # the drafts did their job
    if shape == "empty":
        assert accepted == 0


def test_eos_inside_a_draft_stops_like_plain_decoding(target):
    free = plain_greedy(target, PROMPT, 30)
    eos = free[12]
    target.model.generation_config.eos_token_id = eos
    try:
        reference = plain_greedy(target, PROMPT, 30)
        assert reference[-1] == eos and len(reference) <= 13
        source = OracleSource(len(PROMPT), free, "long")  # drafts run straight through the EOS
        generation = SpeculativeDecoder(target, source, NodeBudget(64)).generate(PROMPT, 30)
        assert generation.tokens == reference and generation.stopped_by == "eos"
    finally:
        target.model.generation_config.eos_token_id = None


def test_plain_loop_matches_generate(target):
    generation = SpeculativeDecoder(target, NoDrafts(), NodeBudget(0)).generate(PROMPT, 20)
    assert generation.tokens == plain_greedy(target, PROMPT, 20)
    assert generation.mean_accepted_length == 1.0


def test_tree_mask_gives_causal_logits_on_every_branch():
    target = tiny_llama(1)
    model = target.model
    draft = tree([10, 11, 12, 13, 14], [-1, 0, -1, 2, 1])
    with torch.inference_mode():
        cache = new_dynamic_cache(model)
        model(**with_cache(model, cache, input_ids=torch.tensor([PROMPT[:-1]])))
        inputs = tree_inputs(PROMPT[-1], draft, len(PROMPT) - 1, model.dtype, torch.device("cpu"))
        logits = model(
            **with_cache(
                model,
                cache,
                input_ids=inputs.input_ids,
                position_ids=inputs.position_ids,
                attention_mask=inputs.attention_mask,
            )
        ).logits[0]
        fed = inputs.input_ids[0].tolist()
        for node in range(len(fed)):
            branch, i = [], node
            while i >= 0:
                branch.append(fed[i])
                i = inputs.fed_parents[i]
            causal = model(input_ids=torch.tensor([PROMPT[:-1] + branch[::-1]])).logits[0, -1]
            assert torch.allclose(logits[node], causal, atol=1e-4), node


def test_limit_depth_keeps_a_valid_tree():
    draft = tree([1, 2, 3, 4, 5], [-1, 0, -1, 1, 2])
    cut = limit_depth(draft, 2)
    cut.check_integrity()
    assert cut.tokens.tolist() == [1, 2, 3, 5] and cut.parents.tolist() == [-1, 0, -1, 2]
    assert len(limit_depth(draft, 0)) == 0 and isinstance(limit_depth(DraftTree.empty(), 3), DraftTree)
