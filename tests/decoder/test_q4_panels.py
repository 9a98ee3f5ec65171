"""The Q4_1 panel kernel (decoder/q4_panel_kernel.c) and its packing (decoder/q4_panels.py), on
SmolLM2's own GGUF file: the codes rebuild the model's float32 weights bit for bit, the kernel's
products equal the float32 panel kernel's bit for bit, the fused layers read the codes where they
should, and codes that do not rebuild a model's weights are never used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoder import fused_layers, q4_panels
from decoder.llama_forward import LlamaTreeForward
from decoder.projections import PanelLinear
from decoder.ragged_attention import RaggedPlan
from decoder.target_model import load_target
from tests.extensions import assert_built

runs_here = pytest.mark.skipif(not q4_panels.available(), reason="the Q4_1 panel kernel needs AVX-512: not here")


@pytest.fixture(scope="module")
def smollm2():
    return load_target("smollm2")


@pytest.fixture(scope="module")
def codes(smollm2):
    packed = q4_panels.packed_layers(smollm2.model, smollm2.gguf)
    assert packed is not None, "SmolLM2's GGUF is Q4_1 throughout its layers: its codes must match"
    return packed


def test_the_install_built_the_kernel():
    assert_built(q4_panels._q4_panel, "decoder._q4_panel")


def test_rows_decode_as_gguf_dequantizes_them():
    """One block's 20 bytes (d, m, 16 bytes of nibbles): code j low in byte j, code j + 16 high."""
    from gguf.quants import dequantize

    generator = np.random.default_rng(0)
    d, m = np.float16(0.0173), np.float16(-0.121)
    nibbles = generator.integers(0, 256, 16, dtype=np.uint8)
    raw = np.concatenate([np.array([d, m]).view(np.uint8), nibbles])[None, :]
    rows = q4_panels.Q4Rows.of_gguf(raw)
    assert (
        rows.codes[0, :16].tolist() == (nibbles & 15).tolist()
        and rows.codes[0, 16:].tolist() == (nibbles >> 4).tolist()
    )
    assert np.array_equal(rows.weights(), dequantize(raw, q4_panels.Q4_1).reshape(1, -1))


def test_the_codes_rebuild_every_weight_bit_for_bit(smollm2, codes):
    for index in (0, len(codes) - 1):
        layer = smollm2.model.model.layers[index]
        for joint, names in q4_panels.JOINTS.items():
            weight = torch.cat([layer.get_submodule(name).weight.detach() for name in names]).numpy()
            assert np.array_equal(q4_panels.rebuilt(codes[index][joint]), weight), (index, joint)


@runs_here
@pytest.mark.parametrize("rows", [1, 2, 5, 12, 13, 16, 24, 25, 40, 49])
def test_products_equal_the_float32_panel_kernels_bit_for_bit(smollm2, codes, rows: int):
    """The kernel rebuilds each weight as the model's and sums in the same order with the same fused
    multiply-adds: not close, equal, over row counts that cut into blocks of up to 12 every way."""
    layer = smollm2.model.model.layers[4]
    generator = torch.Generator().manual_seed(rows)
    attention, mlp = layer.self_attn, layer.mlp
    for joint, float32, width in (
        ("qkv", PanelLinear(attention.q_proj, attention.k_proj, attention.v_proj), 576),
        ("gate_up", PanelLinear(mlp.gate_proj, mlp.up_proj), 576),
        ("down", PanelLinear(mlp.down_proj), 1536),
    ):
        x = torch.randn(rows, width, generator=generator)
        expected = float32(x)
        assert torch.equal(q4_panels.linear(x, codes[4][joint], expected.shape[1]), expected), joint


def test_codes_of_other_weights_are_refused(smollm2):
    """Rows that do not rebuild the weight (one value one step off) match nothing: no codes."""
    layer = smollm2.model.model.layers[2]
    tensor = q4_panels.GgufCodes(smollm2.gguf)._gguf_tensors()["blk.2.attn_v.weight"]
    rows = q4_panels.Q4Rows.of_gguf(np.asarray(tensor.data))
    weight = layer.self_attn.v_proj.weight.detach().numpy().copy()
    assert rows.matching(weight) is not None
    weight[7, 100] = np.nextafter(weight[7, 100], np.float32(1))
    assert rows.matching(weight) is None


def test_a_model_changed_in_place_does_not_meet_its_old_codes(smollm2, codes):
    model = smollm2.model
    down = model.model.layers[9].mlp.down_proj.weight
    before = down[100, 5].item()
    try:
        with torch.no_grad():
            down[100, 5] = float(np.nextafter(np.float32(before), np.float32(1)))
        assert q4_panels.packed_layers(model, smollm2.gguf) is None
    finally:
        with torch.no_grad():
            down[100, 5] = before
    assert q4_panels.packed_layers(model, smollm2.gguf) is not None


@runs_here
def test_the_fused_layers_read_codes_up_to_their_row_limit_and_give_the_same_bits(smollm2, codes):
    """Passes of a few fed tokens read the codes, passes past CODE_ROWS the float32 panels, and both
    give the hidden states of the float32 layers; codes spoiled on purpose show in the first only."""
    model = smollm2.model
    with_codes = LlamaTreeForward(model, gguf=smollm2.gguf)
    float32_only = LlamaTreeForward(model)
    assert with_codes.fused.code_rows == fused_layers.CODE_ROWS and float32_only.fused.code_rows == 0
    spoiled = [dict(layer) for layer in codes]
    spoiled[0]["qkv"] = torch.zeros_like(codes[0]["qkv"])  # every scale and offset 0: weights 0
    spoiling = fused_layers.FusedLayers.of(
        model, with_codes.projections, with_codes._norm_weights, with_codes.head_dim, with_codes.scaling,
        angles=with_codes.angles, codes=spoiled,
    )  # fmt: skip
    cache = with_codes.new_cache(1, 256)

    def hidden(layers: fused_layers.FusedLayers, fed: int) -> torch.Tensor:
        cache.reset()
        with torch.inference_mode():
            return layers(cache, RaggedPlan.chain(list(range(100, 100 + fed)), 0, 0), 0).clone()

    for fed in (3, fused_layers.CODE_ROWS, fused_layers.CODE_ROWS + 5):
        expected = hidden(float32_only.fused, fed)
        assert torch.equal(hidden(with_codes.fused, fed), expected)
        assert torch.equal(hidden(spoiling, fed), expected) == (fed > fused_layers.CODE_ROWS)
