"""The panel kernel (decoder/panel_linear_kernel.c) against float64 products: any rows, input width
and output width (whole panels or not), each row's result independent of the rows beside it; the
layers of the tiny Llama run through it where its AVX-512 or AVX2 code runs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder import panel_linear
from decoder.llama_forward import LlamaTreeForward
from decoder.projections import PanelLinear
from tests.decoder.tiny_models import tiny_llama
from tests.extensions import assert_built, needs

pytestmark = needs(panel_linear._panel_linear, "decoder._panel_linear")
FLOAT32_STEP = 2.0**-23


def test_the_install_built_the_kernel():
    assert_built(panel_linear._panel_linear, "decoder._panel_linear")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    k=st.integers(1, 200),
    n=st.integers(1, 3 * panel_linear.PANEL + 7),
    seed=st.integers(0, 2**16),
)
def test_products_match_float64(rows: int, k: int, n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=generator)
    x = torch.randn(rows, k, generator=generator)
    out = panel_linear.linear(x, panel_linear.pack(weight), n)
    expected = x.double() @ weight.double().T
    # Sums in k order: each step rounds by at most half a float32 step of the partial sum's size.
    bound = k * FLOAT32_STEP * (x.double().abs() @ weight.double().abs().T) + 1e-30
    assert out.shape == (rows, n)
    assert bool(((out.double() - expected).abs() <= bound).all())


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(2, 30), k=st.integers(1, 100), n=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_a_row_comes_out_the_same_whatever_rows_are_beside_it(rows: int, k: int, n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    weight = panel_linear.pack(torch.randn(n, k, generator=generator))
    x = torch.randn(rows, k, generator=generator)
    together = panel_linear.linear(x, weight, n)
    for row in range(rows):
        assert torch.equal(panel_linear.linear(x[row : row + 1], weight, n)[0], together[row])


def test_inputs_that_do_not_fit_are_refused():
    weight = panel_linear.pack(torch.randn(50, 16))
    with pytest.raises(ValueError, match="does not fit"):
        panel_linear.linear(torch.randn(3, 15), weight, 50)
    with pytest.raises(ValueError, match="does not fit"):
        panel_linear.linear(torch.randn(3, 16), weight, 97)
    with pytest.raises(ValueError, match="float32"):
        panel_linear.linear(torch.randn(3, 16, dtype=torch.float64), weight, 50)


def test_the_tiny_llama_runs_its_float32_products_through_the_kernel():
    if not panel_linear.available(torch.zeros(1)):
        pytest.skip("neither the kernel's AVX-512 nor its AVX2 code runs on this CPU: oneDNN's products answer")
    forward = LlamaTreeForward(tiny_llama().model)
    assert forward.product_kind is PanelLinear
    assert isinstance(forward.head, PanelLinear)
