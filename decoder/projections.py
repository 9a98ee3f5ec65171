"""The matrix products of one decoder layer, in the form that is fastest where the engine runs.

In float32 on a CPU with AVX-512 or AVX2, our panel kernel (panel_linear.py) runs them: it overlaps the
weights' reading with the arithmetic, so a pass of up to ~20 fed tokens costs about one of a single
token. Otherwise, on a CPU, PyTorch's default linear switches from a matrix-vector kernel for one fed token to a
general matrix kernel for two or more, and the latter is slow on the narrow inputs of verification
(a pass of 2 to 16 tokens cost ~1.4-1.6x a pass of one, on SmolLM2 with 2 threads). oneDNN with
weights reordered once for it ("prepacked", as torch.compile's freezing does) keeps narrow inputs
near the cost of one token and is faster for one token too. We call the oneDNN linear that
torch.compile's CPU backend emits for frozen weights (`mkldnn._linear_pointwise`), which takes
and returns ordinary tensors, so no layout conversion runs per call. The packed copies live beside the
model (its own modules stay as they are, so `generate` is untouched), and the projections that
read the same input are fused: q, k and v in one product, the MLP's gate and up in another.

Elsewhere (a GPU, or a CPU build without oneDNN) plain products run over joined copies of the
weights (q/k/v and gate/up: fewer, wider kernels) and the model's own modules compute the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import panel_linear

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(model: nn.Module) -> bool:
    parameter = next(model.parameters())
    return (
        parameter.device.type == "cpu"
        and parameter.dtype in PACKABLE_DTYPES
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and _onednn_prepacks(parameter.dtype)
    )


@functools.cache
def _onednn_prepacks(dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacks weights of this dtype on this CPU: its bfloat16 path needs AVX-512
    (bw, vl, dq) or AVX-NE-CONVERT, and refuses elsewhere (AMD Zen 3, say). Asked of oneDNN itself
    once, on a small weight, so our rule cannot drift from its own."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), None)
    except RuntimeError:
        return False
    return True


class JointLinear:
    """Linears of one input as one product, over a copy of their weights joined (a copy, so the
    model's own modules and what it saves stay as they are)."""

    def __init__(self, *linears: nn.Linear) -> None:
        weight = torch.cat([linear.weight.detach() for linear in linears])
        self.weight = self._prepared(weight)
        self.bias = _joint_bias(linears, weight)
        self.sizes = [linear.out_features for linear in linears]

    @staticmethod
    def _prepared(weight: torch.Tensor) -> torch.Tensor:
        return weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self(x).split(self.sizes, dim=-1)


class PackedLinear(JointLinear):
    """One or more nn.Linear of the same input, as one oneDNN product with prepacked weights."""

    @staticmethod
    def _prepared(weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class PanelLinear(JointLinear):
    """One or more nn.Linear of the same input, as one product of our panel kernel (float32, CPU)."""

    @staticmethod
    def _prepared(weight: torch.Tensor) -> torch.Tensor:
        return panel_linear.pack(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = panel_linear.linear(x, self.weight, sum(self.sizes))
        return out if self.bias is None else out.add_(self.bias)


def product_kind(model: nn.Module) -> type[JointLinear]:
    """The fastest form of the model's products here: the panel kernel, oneDNN's prepacked products,
    or plain ones over joined weights."""
    parameter = next(model.parameters())
    if panel_linear.available(parameter):
        return PanelLinear
    return PackedLinear if can_pack(model) else JointLinear


class LayerProjections:
    """q/k/v, the attention output, and the MLP of one Llama-family decoder layer; q, k and v come
    out of one product, [..., q | k | v], and so do the MLP's gate and up."""

    def __init__(self, layer: nn.Module, kind: type[JointLinear]) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.activation: Callable[[torch.Tensor], torch.Tensor] = mlp.act_fn
        self.qkv = kind(attention.q_proj, attention.k_proj, attention.v_proj)
        self.gate_up = kind(mlp.gate_proj, mlp.up_proj)
        joined_only = kind is JointLinear  # single plain linears run as the model's own modules
        self.output = attention.o_proj if joined_only else kind(attention.o_proj)
        self.down = mlp.down_proj if joined_only else kind(mlp.down_proj)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up.split(x)
        return self.down(self.activation(gate) * up)


def head_projection(model: nn.Module, kind: type[JointLinear]) -> Callable[[torch.Tensor], torch.Tensor]:
    return model.lm_head if kind is JointLinear else kind(model.lm_head)


def _joint_bias(linears: tuple[nn.Linear, ...], weight: torch.Tensor) -> torch.Tensor | None:
    """The linears' biases end to end (zeros for one without), or None if none has one."""
    if all(linear.bias is None for linear in linears):
        return None
    return torch.cat(
        [
            linear.bias.detach() if linear.bias is not None else weight.new_zeros(linear.out_features)
            for linear in linears
        ]
    )
