"""The fused layers (decoder/layer_kernel.c) against the torch layers they replace: the same logits to
float32 rounding for a ragged pass over rows of different lengths and trees and for a prefill of
several attention chains, the same keys and values in the cache; and models whose layers compute
something else keep the torch layers."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from decoder.fused_layers import _fused_layers, greedy_tokens
from decoder.llama_forward import LlamaTreeForward
from decoder.ragged_attention import PrefillPlan
from decoder.target_model import load_target
from decoder.tree_batch import pack
from tests.decoder.tiny_models import VOCAB, tiny_llama, tree
from tests.extensions import assert_built, needs

pytestmark = needs(_fused_layers, "decoder._fused_layers")


def test_the_install_built_the_kernel():
    assert_built(_fused_layers, "decoder._fused_layers")


def fused_and_torch_passes(forward: LlamaTreeForward, prompts: list[list[int]], drafts: list, vocab: int) -> dict:
    """Per layer kind: the prefills' last logits, a ragged pass's logits, and the cache after both."""
    if forward.fused is None:
        pytest.skip("the fused layers do not run here (no AVX-512 or AVX2 with FMA)")
    fused, results = forward.fused, {}
    with torch.inference_mode():
        for kind in ("torch", "fused"):
            forward.fused = fused if kind == "fused" else None
            cache = forward.new_cache(rows=len(prompts), capacity=max(map(len, prompts)) + 32)
            prefills = []
            for row, prompt in enumerate(prompts):
                prefills.append(forward.ragged(cache, PrefillPlan.of(prompt, row), logits_of=slice(-1, None)))
                cache.advance(row, len(prompt))
            roots = [prompt[-1] % vocab for prompt in prompts]
            fed = pack(roots, drafts, cache.lengths, 8, 0, torch.float32, torch.device("cpu"), ragged=True)
            step = fed.ragged.laid_out(forward.ragged(cache, fed.ragged))
            results[kind] = (torch.cat(prefills), step, cache.keys.clone(), cache.values.clone())
    forward.fused = fused
    return results


def assert_close(results: dict, drafts: list, tolerance: float) -> None:
    (torch_prefills, torch_step, torch_keys, torch_values) = results["torch"]
    (fused_prefills, fused_step, fused_keys, fused_values) = results["fused"]
    assert torch.allclose(fused_prefills, torch_prefills, atol=tolerance)
    for row, draft in enumerate(drafts):
        fed_count = 1 + len(draft)
        assert torch.allclose(fused_step[row, :fed_count], torch_step[row, :fed_count], atol=tolerance)
    assert torch.allclose(fused_keys, torch_keys, atol=tolerance)
    assert torch.allclose(fused_values, torch_values, atol=tolerance)


def test_fused_layers_give_the_torch_layers_logits_on_a_tiny_llama():
    forward = LlamaTreeForward(tiny_llama().model)
    prompts = [[(7 * i) % VOCAB for i in range(150)], [3, 3, 3], [10, 20, 30, 40, 50, 60, 10, 20, 30]]
    drafts = [tree([10, 11, 12, 13, 14], [-1, 0, -1, 2, 1]), tree([], []), tree([7, 8], [-1, 0])]
    results = fused_and_torch_passes(forward, prompts, drafts, VOCAB)
    # Two float32 computations (another order of a norm's sum, a polynomial exponential): logits of
    # up to ~10 here agree to ~1e-5; a wrong rotation or a skipped residual moves them by ~0.1 or more.
    assert_close(results, drafts, tolerance=1e-4)


@pytest.fixture(scope="module")
def smollm2_forward():
    return LlamaTreeForward(load_target("smollm2").model)


def test_fused_layers_give_the_torch_layers_logits_on_smollm2(smollm2_forward):
    prompts = [list(range(1000, 1130)), list(range(50, 90)), [17] * 9]  # the first: 3 chains of attention
    drafts = [tree([300, 301, 302], [-1, 0, 0]), tree([], []), tree([5, 6, 7, 8, 9, 10, 11], [-1, 0, 1, 2, 3, 4, 5])]
    results = fused_and_torch_passes(smollm2_forward, prompts, drafts, 49152)
    # SmolLM2's logits reach ~30: they agree to ~7e-5 (measured), a thousandth of what a wrong key moves.
    assert_close(results, drafts, tolerance=5e-4)


@pytest.mark.parametrize(
    "unlike", [{"attention_bias": True}, {"mlp_bias": True}, {"hidden_act": "gelu"}], ids=lambda u: next(iter(u))
)
def test_layers_the_kernel_does_not_compute_keep_the_torch_layers(unlike: dict):
    if not _fused_layers.available():
        pytest.skip("the fused layers do not run here (no AVX-512 or AVX2 with FMA)")
    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    assert LlamaTreeForward(LlamaForCausalLM(LlamaConfig(**sizes, head_dim=16))).fused is not None
    assert LlamaTreeForward(LlamaForCausalLM(LlamaConfig(**sizes, head_dim=16, **unlike))).fused is None


def test_the_angle_tables_hold_what_the_rotary_embedding_computes_each_pass(smollm2_forward):
    """The kernel rotates by tables computed once for every position: bit for bit the angles that
    transformers' rotary embedding gives the positions of a pass (the torch layers' path)."""
    if smollm2_forward.fused is None:
        pytest.skip("the fused layers do not run here (no AVX-512 or AVX2 with FMA)")
    positions = torch.tensor([0, 1, 117, 118, 118, 119, 1023, 1500, 3000])
    tables = smollm2_forward.fused._angles_up_to(int(positions.max()) + 1)
    assert len(tables[0]) >= 3001
    inner = smollm2_forward.model.model
    cos, sin = inner.rotary_emb(torch.empty(1, len(positions), 576), positions[None])
    assert torch.equal(tables[0][positions], cos[0])
    half = sin.shape[-1] // 2
    assert torch.equal(tables[1][positions], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1))


def test_a_pass_with_ids_or_positions_outside_the_tables_is_refused():
    forward = LlamaTreeForward(tiny_llama().model)
    if forward.fused is None:
        pytest.skip("the fused layers do not run here (no AVX-512 or AVX2 with FMA)")
    cache = forward.new_cache(rows=1, capacity=16)
    with torch.inference_mode():
        plan = PrefillPlan.of([1, 2, 3], 0)
        forward.ragged(cache, plan, logits_of=slice(-1, None))  # within range: runs
        for bad in (VOCAB, -1):
            wrong = PrefillPlan(plan.input_ids.copy(), plan.positions, plan.chains)
            wrong.input_ids[1] = bad
            with pytest.raises(ValueError, match="ids, positions"):
                forward.ragged(cache, wrong, logits_of=slice(-1, None))
        wrong = PrefillPlan(plan.input_ids, plan.positions.copy(), plan.chains)
        wrong.positions[2] = -1
        with pytest.raises(ValueError, match="ids, positions"):
            forward.ragged(cache, wrong, logits_of=slice(-1, None))


@pytest.mark.parametrize("vocab", [1, 15, 16, 255, 256, 257, 49152, 50001])
def test_greedy_tokens_are_torch_argmax(vocab: int):
    """Ties (the first largest wins), infinities and NaN (the first NaN wins), across the kernel's
    vector lanes and blocks of 256, rows of a vocabulary not a multiple of either."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(12, vocab, generator=generator)
    logits[1] = 0.5  # all tied
    logits[2, vocab // 2 :] = 9.0  # tied in the second half
    logits[3, -1] = float("inf")
    logits[4, vocab // 3] = float("nan")
    logits[4, -1] = float("nan")
    logits[5] = float("-inf")
    logits[6, 0] = 50.0
    logits[7, -1] = 50.0
    logits[8] = -logits[8].abs()
    logits[9, 255 % vocab] = 77.0
    logits[9, 256 % vocab] = 77.0
    assert greedy_tokens(logits) == logits.argmax(dim=-1).tolist()
    assert greedy_tokens(logits[:0]) == []
    other = torch.randn(4, 8, generator=generator)
    assert greedy_tokens(other.double()) is None and greedy_tokens(other.t()) is None  # torch's to answer
