"""Every decoder layer of a float32 ragged pass on a CPU, and the final norm, in one call into layer_kernel.c.

Driven from Python, a layer of a small model is ~25 tiny torch operations and a few calls into our
kernels, and their launches cost a quarter of a one-token pass on 2 cores (SmolLM2). The C code runs
the same computation: the norms, the rotation, the activation and the residual adds itself, the
products through the panel kernel and the attention through the ragged kernel. It serves the ragged
passes of `LlamaTreeForward` where both kernels run, the model is float32 with SiLU MLPs and no biases;
elsewhere the layers run as torch operations. Tests hold its logits to the torch layers' and decoding
to `generate`'s tokens. (A torch operation between passes costs several times what it does in a
loop: the weights streamed through the caches have evicted its code and data; the final norm measured
~50-90 us after a pass against 9 us in a loop, so it runs in C too, and so do the embedding, the
rotary angles, read from tables computed once by transformers' own rotary embedding, and the greedy
verdicts after the head, `greedy_tokens`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .projections import LayerProjections, PanelLinear
from .ragged_attention import PrefillPlan, RaggedPlan
from .static_cache import StaticKVCache

try:  # built by the install (layer_kernel.c)
    from decoder import _fused_layers
except ImportError:  # built without a C compiler: the torch layers answer
    _fused_layers = None

SILU_NAMES = ("silu", "swish")
# Products of up to this many fed tokens read a model's Q4_1 codes where it has them: there the weights'
# reading sets the time, and the codes are a sixth of the bytes; beyond, the arithmetic does, and the
# float32 panel kernel's costs as much or less (no weights to rebuild): `benchmarks/product_costs.py`
# on 2 Zen 5 cores, a pass's products in ms (float32 panels / codes): 1 token 12.9 / 5.4, 8 13.5 / 7.6,
# 16 11.9 / 11.5, 24 16.2 / 16.2.
CODE_ROWS = 16


# The rotary angles are tabled for positions in steps of this (a table of 1,024 is 0.5 MB for SmolLM2).
ANGLE_ROWS_GRANULE = 1024


class FusedLayers:
    """A model's layers as the kernel takes them: each layer's weights as addresses (the tensors kept
    alive here), the embedding and the final norm's weights, the shapes, the norms' epsilon, and the
    rotary angles of every position so far (`angles(positions)` computes them: transformers' rotary
    embedding, called once per ANGLE_ROWS_GRANULE positions rather than once a pass)."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        projections: Sequence[LayerProjections],
        norm_weights: dict[nn.Module, torch.Tensor],
        embedding: torch.Tensor,
        final_norm: torch.Tensor,
        shape: tuple[int, int, int, int, int],
        scale: float,
        angles: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        codes: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """`codes`: per layer, its products' packed Q4_1 codes (q4_panels.py), which then serve the
        products of up to CODE_ROWS fed tokens in place of the float32 panels (the same bits)."""
        self._tensors = [final_norm.contiguous(), embedding.contiguous()]
        self.final_norm, self.embedding = (tensor.data_ptr() for tensor in self._tensors)
        self.vocab = embedding.shape[0]
        self._angles_of = angles
        self._angles = (torch.empty(0, shape[3]), torch.empty(0, shape[3]))  # cos, signed sin by position
        self._hidden = torch.empty(0, shape[0])  # the stream of a pass, reused while it is large enough
        addresses = []
        self.code_rows = CODE_ROWS if codes is not None else 0
        for index, (layer, products) in enumerate(zip(layers, projections)):
            tensors = (
                norm_weights[layer.input_layernorm].contiguous(),
                products.qkv.weight,
                products.output.weight,
                norm_weights[layer.post_attention_layernorm].contiguous(),
                products.gate_up.weight,
                products.down.weight,
            )
            if codes is not None:
                tensors += tuple(codes[index][name] for name in ("qkv", "output", "gate_up", "down"))
            self._tensors.extend(tensors)
            addresses.append(tuple(tensor.data_ptr() for tensor in tensors))
        self.layers = tuple(addresses)
        self.shape = shape
        self.eps = layers[0].input_layernorm.variance_epsilon
        self.scale = scale

    @classmethod
    def of(
        cls,
        model: nn.Module,
        projections: Sequence[LayerProjections],
        norm_weights: dict[nn.Module, torch.Tensor],
        head_dim: int,
        scale: float,
        angles: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        codes: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> FusedLayers | None:
        """The fused layers of this model, or None where the kernel does not compute what its layers do;
        with `codes` (its products' Q4_1 codes, given where their kernel runs), reading those."""
        config, layers = model.config, list(model.model.layers)
        if _fused_layers is None or not _fused_layers.available():
            return None
        norms = [norm for layer in layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)]
        norms.append(model.model.norm)
        products = [product for p in projections for product in (p.qkv, p.output, p.gate_up, p.down)]
        if (
            getattr(config, "hidden_act", None) not in SILU_NAMES
            or any(not isinstance(product, PanelLinear) or product.bias is not None for product in products)
            or any(norm_weights[norm].dtype != torch.float32 for norm in norms)
            or len({getattr(norm, "variance_epsilon", None) for norm in norms}) != 1
            or model.model.embed_tokens.weight.dtype != torch.float32
        ):
            return None
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        shape = (config.hidden_size, heads, kv_heads, head_dim, config.intermediate_size)
        embedding = model.model.embed_tokens.weight.detach()
        final_norm = norm_weights[model.model.norm]
        return cls(layers, projections, norm_weights, embedding, final_norm, shape, scale, angles, codes)

    def __call__(self, cache: StaticKVCache, plan: RaggedPlan | PrefillPlan, tail: int) -> torch.Tensor:
        """Embed the plan's fed tokens and run every layer over them, writing their keys and values into
        `cache`, then the final norm; the last layer's output and the norm only for tokens tail.. (those
        whose logits are wanted): the head's input for those, [n - tail, dim]."""
        tokens, (dim, _, _, head_dim, _) = len(plan.input_ids), self.shape
        keys, values = cache.keys, cache.values
        if keys.dtype != torch.float32 or (keys.shape[0], keys.shape[2], keys.shape[4]) != (
            len(self.layers),
            self.shape[2],
            head_dim,
        ):
            raise ValueError("the cache does not fit these layers")
        chains = plan.kernel_chains()
        if any(len(starts) > cache.rows for _, _, starts, _ in chains):
            raise ValueError("the ragged plan does not fit this cache")
        cos, signed_sin = self._angles_up_to(int(plan.positions.max()) + 1)
        if len(self._hidden) < tokens:
            self._hidden = torch.empty(tokens, dim)
        _fused_layers.run(
            self._hidden.data_ptr(),
            plan.input_ids,
            plan.positions,
            tail,
            self.embedding,
            self.vocab,
            cos.data_ptr(),
            signed_sin.data_ptr(),
            len(cos),
            self.layers,
            self.shape,
            self.eps,
            self.scale,
            keys.data_ptr(),
            values.data_ptr(),
            keys.stride(0),
            keys.shape[3],
            chains,
            self.final_norm,
            self.code_rows,
        )
        return self._hidden[tail:tokens]

    def _angles_up_to(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The angle tables, grown to hold at least `positions` positions."""
        if len(self._angles[0]) < positions:
            rows = -(-positions // ANGLE_ROWS_GRANULE) * ANGLE_ROWS_GRANULE
            self._angles = tuple(table.contiguous() for table in self._angles_of(torch.arange(rows)))
        return self._angles


def greedy_tokens(logits: torch.Tensor) -> list[int] | None:
    """Each row's argmax of float32 logits [n, vocab] on a CPU, as torch.argmax takes it (the first
    largest; a NaN the largest), in one call into layer_kernel.c; None where that does not run."""
    if _fused_layers is None or logits.dim() != 2 or logits.dtype != torch.float32 or logits.device.type != "cpu":
        return None
    if not logits.is_contiguous() or logits.shape[1] == 0:
        return None
    return _fused_layers.greedy(logits.data_ptr(), logits.shape[0], logits.shape[1])


def argmax_tokens(logits: torch.Tensor) -> list:
    """Each row's argmax (torch.argmax's rule), through `greedy_tokens` where it runs; nested lists
    for logits of more than two dimensions."""
    tokens = greedy_tokens(logits)
    return tokens if tokens is not None else logits.argmax(dim=-1).tolist()
