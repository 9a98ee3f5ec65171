"""The ragged attention kernel (decoder/ragged_attention_kernel.c) against the rule it implements,
computed here in float64: each fed token sees its row's history and its own ancestors, nothing
else; the fed keys and values land in their slots and nothing else in the cache changes. And the
ragged pass of a model gives the padded pass's logits."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder.llama_forward import LlamaTreeForward
from decoder.ragged_attention import RaggedPlan, _ragged_attention
from decoder.static_cache import StaticKVCache
from decoder.tree_batch import pack, prefill_inputs
from tests.decoder.tiny_models import VOCAB, tiny_llama, tree
from tests.extensions import assert_built, needs

pytestmark = needs(_ragged_attention, "decoder._ragged_attention")
CAPACITY = 96


def test_the_install_built_the_kernel():
    assert_built(_ragged_attention, "decoder._ragged_attention")


@st.composite
def trees(draw: st.DrawFn, most: int) -> tuple[list[int], list[int]]:
    """Tokens and parents of a draft tree (parents precede children) of at most `most` nodes."""
    size = draw(st.integers(0, most))
    parents = [draw(st.integers(-1, i - 1)) for i in range(size)]
    return [draw(st.integers(1, VOCAB - 1)) for _ in range(size)], parents


@st.composite
def batches(draw: st.DrawFn) -> dict:
    rows = draw(st.integers(1, 4))
    width = draw(st.sampled_from([1, 2, 4, 8, 16]))
    return {
        "kv_heads": draw(st.integers(1, 3)),
        "groups": draw(st.integers(1, 3)),
        "head_dim": draw(st.sampled_from([16, 32, 64, 128])),
        "starts": [draw(st.integers(0, CAPACITY - width)) for _ in range(rows)],
        "trees": [draw(trees(width - 1)) for _ in range(rows)],
        "width": width,
        "seed": draw(st.integers(0, 2**16)),
    }


def expected_attention(plan: RaggedPlan, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float):
    """The rule in float64: [n, heads, d] from queries [n, heads, d] and the layer's filled cache."""
    query, keys, values = query.double(), keys.double(), values.double()
    heads, kv_heads = query.shape[1], keys.shape[1]
    out = torch.zeros_like(query)
    for t, (row, offset, bits) in enumerate(zip(plan.row_of, plan.offset_of, plan.sees.tolist())):
        start = int(plan.starts[row])
        seen = list(range(start)) + [start + j for j in range(int(offset) + 1) if (bits >> j) & 1]
        for head in range(heads):
            kv = head // (heads // kv_heads)
            weights = torch.softmax(keys[row, kv, seen] @ query[t, head] * scale, dim=0)
            out[t, head] = weights @ values[row, kv, seen]
    return out


@settings(max_examples=60, deadline=None)
@given(batches())
def test_each_fed_token_attends_to_its_history_and_ancestors_only(batch: dict):
    torch.manual_seed(batch["seed"])
    kv_heads, d = batch["kv_heads"], batch["head_dim"]
    heads = kv_heads * batch["groups"]
    rows = len(batch["starts"])
    cache = StaticKVCache(1, rows + 1, kv_heads, d, CAPACITY, torch.float32, torch.device("cpu"))
    cache.keys.normal_(), cache.values.normal_()
    before = cache.keys.clone(), cache.values.clone()
    drafts = [tree(tokens, parents) for tokens, parents in batch["trees"]]
    fed = pack([1] * rows, drafts, batch["starts"], batch["width"], 0, torch.float32, torch.device("cpu"), ragged=True)
    plan = fed.ragged
    n = len(plan.row_of)
    qkv = torch.randn(n, heads + 2 * kv_heads, d)
    rotated = torch.randn(n, heads + kv_heads, d)
    out = plan.attend(cache, 0, rotated, qkv, scale=d**-0.5)
    keys, values = before[0][0].clone(), before[1][0].clone()
    for t, (row, offset) in enumerate(zip(plan.row_of, plan.offset_of)):
        slot = int(plan.starts[row] + offset)
        keys[row, :, slot], values[row, :, slot] = rotated[t, heads:], qkv[t, heads + kv_heads :]
    assert torch.equal(cache.keys[0], keys) and torch.equal(cache.values[0], values)  # those slots, nothing else
    expected = expected_attention(plan, rotated[:, :heads], keys, values, d**-0.5)
    assert torch.allclose(out.view(n, heads, d).double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_every_instruction_set_s_code_attends_by_the_rule(isa: str):
    """The property above, run with the kernel's narrower vector code (CREST_ATTENTION_ISA), which
    this machine would otherwise never run (each set sums a dot product's lanes its own way)."""
    if isa == "avx2" and _ragged_attention.instruction_set() == "base":
        pytest.skip("this CPU has no AVX2")
    environment = {**os.environ, "CREST_ATTENTION_ISA": isa}
    check = (
        "from decoder import _ragged_attention; "
        f"assert _ragged_attention.instruction_set() == {isa!r}, _ragged_attention.instruction_set()"
    )
    subprocess.run([sys.executable, "-c", check], env=environment, check=True)
    test = f"{__file__}::test_each_fed_token_attends_to_its_history_and_ancestors_only"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=environment, capture_output=True
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:]


def test_a_plan_the_kernel_cannot_follow_is_refused():
    cache = StaticKVCache(1, 2, 1, 16, 8, torch.float32, torch.device("cpu"))

    def plan(row_of: list[int], offset_of: list[int], starts: list[int], sees: list[int]) -> RaggedPlan:
        n = len(row_of)
        zeros = torch.zeros(n, dtype=torch.long)
        counts = np.bincount(row_of, minlength=2).tolist()
        return RaggedPlan(
            zeros, zeros, np.array(row_of), np.array(offset_of), np.array(starts), np.array(sees, np.uint64), counts, 2
        )

    def attend(plan: RaggedPlan) -> torch.Tensor:
        n = len(plan.row_of)
        return plan.attend(cache, 0, torch.zeros(n, 2, 16), torch.zeros(n, 3, 16), 0.25)

    attend(plan([0, 0, 1], [0, 1, 0], [3, 0], [1, 3, 1]))
    refused = {
        "a token that does not see itself": plan([0, 0], [0, 1], [3, 0], [1, 1]),
        "a token that sees a later one": plan([0, 0], [0, 1], [3, 0], [3, 3]),
        "a slot past the cache": plan([0, 0], [0, 1], [7, 0], [1, 3]),
        "a row's tokens in two runs": plan([0, 1, 0], [0, 0, 1], [3, 3], [1, 1, 3]),
    }
    for why, wrong in refused.items():
        with pytest.raises(ValueError, match="ragged plan"):
            attend(wrong)
            pytest.fail(why)


def test_the_ragged_pass_gives_the_padded_pass_logits():
    llama = tiny_llama()
    forward = LlamaTreeForward(llama.model)
    prompts = [[5, 9, 2, 33, 17, 8, 40], [3, 3, 3], [10, 20, 30, 40, 50, 60, 10, 20, 30]]
    drafts = [tree([10, 11, 12, 13, 14], [-1, 0, -1, 2, 1]), tree([], []), tree([7, 8], [-1, 0])]
    logits = {}
    with torch.inference_mode():
        for layout in ("padded", "ragged"):
            cache = forward.new_cache(rows=len(prompts), capacity=64)
            for row, prompt in enumerate(prompts):
                fed = prefill_inputs(prompt, torch.float32, torch.device("cpu"))
                forward(cache, fed.input_ids, fed.positions, fed.slots, fed.mask, rows=slice(row, row + 1))
                cache.advance(row, len(prompt))
            lengths = cache.lengths
            fed = pack([1, 2, 3], drafts, lengths, 8, 0, torch.float32, torch.device("cpu"), ragged=layout == "ragged")
            if layout == "ragged":
                logits[layout] = fed.ragged.laid_out(forward.ragged(cache, fed.ragged))
            else:
                logits[layout] = forward(cache, fed.input_ids, fed.positions, fed.slots, fed.mask, real=fed.real)
    # Two float32 summation orders (the kernel's vector width sets its own): logits up to ~9 agree to
    # ~2e-5 (AVX2) or ~1e-5 (AVX-512); a token attending to a wrong key moves them by ~0.1 or more.
    for row, draft in enumerate(drafts):
        fed_count = 1 + len(draft)
        assert torch.allclose(logits["ragged"][row, :fed_count], logits["padded"][row, :fed_count], atol=1e-4)
