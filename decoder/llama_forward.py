"""The verification forward pass of a Hugging Face Llama-family model over a `StaticKVCache`.

The model stays a transformers model: its own modules compute the embedding, the rotary angles and
the activation, and its own weights every product (copies with the products of one input joined:
`projections.py`; on a CPU our panel kernel in float32, else oneDNN's prepacked products). Norms
and the rotation run as fewer, fused operations than transformers' own (one `rms_norm` each; the
rotation of queries and keys together), because a pass of a small model is a few thousand tiny
operations whose launches, not their arithmetic, cost the time (on a GPU, each kernel of a CUDA
graph still costs a few microseconds).

The attention's cache handling is ours: keys and values go into preallocated slots chosen per
row, and attention reads the cached prefix through an additive mask, so a draft tree of any shape
is verified in one pass and nothing is allocated per layer.
Each fed token's logits are those a plain causal pass along its branch would give.

Llama, Mistral (without a sliding window) and Qwen2 share this structure; other architectures
(GPT-2, Gemma-3's sliding windows, Qwen3's q/k norms) use the eager reference loop instead.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from . import q4_panels
from .fused_layers import FusedLayers, argmax_tokens
from .projections import LayerProjections, head_projection, product_kind
from .ragged_attention import PrefillPlan, RaggedPlan
from .screened_head import ScreenedHead
from .static_cache import StaticKVCache

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


@cache
def forward_fingerprint() -> str:
    """Names this pass's code, so timings measured of an older pass (the engine's cost curves) are
    measured again rather than reused."""
    here = Path(__file__).parent
    names = (
        "llama_forward.py",
        "projections.py",
        "cuda_graphs.py",
        "ragged_attention.py",
        "ragged_attention_kernel.c",
        "ragged_attention_isa.h",
        "panel_linear.py",
        "panel_linear_kernel.c",
        "panel_linear_api.h",
        "ragged_attention_api.h",
        "fused_layers.py",
        "layer_kernel.c",
        "screened_head.py",
        "screened_head_kernel.c",
        "screened_head_isa.h",
        "q4_panels.py",
        "q4_panel_kernel.c",
        "q4_panel_api.h",
    )
    sources = b"".join((here / name).read_bytes() for name in names if (here / name).exists())  # a wheel lacks the .c
    return hashlib.sha256(sources).hexdigest()[:10]


def _q4_codes(model: PreTrainedModel, gguf: Path | None) -> list[dict[str, torch.Tensor]] | None:
    """The Q4_1 codes of a float32 model on a CPU dequantized from `gguf`, where the kernel runs here."""
    parameter = next(model.parameters())
    if gguf is None or parameter.dtype != torch.float32 or parameter.device.type != "cpu" or not q4_panels.available():
        return None
    return q4_panels.packed_layers(model, gguf)


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why the static-cache forward can't run this model (None when it can)."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, part) for part in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return "unexpected module layout"
    for layer in inner.layers:
        if not all(hasattr(layer, part) for part in _LAYER_PARTS):
            return "unexpected decoder layer layout"
        if not all(hasattr(getattr(layer, norm), "variance_epsilon") for norm in _LAYER_PARTS[:2]):
            return "unexpected norm layout"
        if not all(hasattr(layer.self_attn, part) for part in _ATTENTION_PARTS):
            return "unexpected attention layout"
        if not all(hasattr(layer.mlp, part) for part in _MLP_PARTS):
            return "unexpected MLP layout"
    return None


class LlamaTreeForward:
    """Logits of fed tokens [rows, q] at given positions, attending through `mask`."""

    def __init__(self, model: PreTrainedModel, float32_residual: bool = False, gguf: Path | None = None) -> None:
        """`float32_residual`: for a bfloat16/float16 model, keep the residual stream (what each layer adds
        to) in float32 and round only each product's input: fewer roundings, so the output stays closer
        to float32 decoding, for a few more operations per layer. `gguf`: the file a float32 model was
        dequantized from; where its linears are Q4_1 codes that rebuild the model's weights bit for bit,
        the fused layers read those (q4_panels.py)."""
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the static-cache engine does not support this model: {reason}")
        self.model = model
        config = model.config
        self.layers = list(model.model.layers)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.layers[0].self_attn.scaling
        self.product_kind = product_kind(model)
        self.projections = [LayerProjections(layer, self.product_kind) for layer in self.layers]
        self.head = head_projection(model, self.product_kind)
        self.dtype = next(model.parameters()).dtype
        self.residual_dtype = torch.float32 if float32_residual else self.dtype
        norms = [getattr(layer, part) for layer in self.layers for part in _LAYER_PARTS[:2]] + [model.model.norm]
        self._norm_weights = {norm: norm.weight.detach().to(self.residual_dtype) for norm in norms}
        # Ragged passes' layers in one C call where it computes what they do (fused_layers.py).
        codes = _q4_codes(model, gguf)
        self.fused = FusedLayers.of(
            model, self.projections, self._norm_weights, self.head_dim, self.scaling, angles=self.angles, codes=codes
        )
        # Their greedy passes' head read as bfloat16 where that runs (screened_head.py): None elsewhere.
        self.screened_head = ScreenedHead.of(model.lm_head) if self.fused is not None else None
        # The fused attention kernels of a GPU take an additive mask only with as many key heads as
        # query heads: there, grouped keys and values are repeated up front (on a CPU, SDPA groups them).
        self.repeat_kv = next(model.parameters()).device.type == "cuda" and self.kv_heads != self.heads
        self.grouped_products = next(model.parameters()).device.type == "cpu"

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary embedding's cos and signed sin (`_signed_halves`) at each position [n], in the
        model's dtype: [n, head_dim] each, as transformers computes them."""
        like = torch.empty(0, dtype=self.dtype, device=positions.device)  # what the module reads: dtype, device
        cos, sin = self.model.model.rotary_emb(like, positions[None])
        return cos[0], _signed_halves(sin)[0]

    def new_cache(self, rows: int, capacity: int) -> StaticKVCache:
        parameter = next(self.model.parameters())
        return StaticKVCache(
            len(self.layers), rows, self.kv_heads, self.head_dim, capacity, parameter.dtype, parameter.device
        )

    def __call__(
        self,
        cache: StaticKVCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor,
        rows: slice = slice(None),
        real: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """`input_ids`, `positions`, `slots` [r, q]; `mask` [r, 1, q, k] additive over cache slots 0..k-1
        (the fed tokens' own slots included); `rows` picks the cache rows (all by default). `real`: the
        flat indices (row * q + i) of the fed tokens that are not fillers; given, the products run on
        those alone (fillers only pad the attention layout) and the fillers' logits are left zero.
        `last_only` (a prefill, without `real`): only each row's last token's logits, [r, 1, vocab]; the
        head's product over the others would be a fifth of the prefill's arithmetic."""
        inner = self.model.model
        embedded = inner.embed_tokens(input_ids).to(self.residual_dtype)
        cos, sin = inner.rotary_emb(embedded, positions)  # in the residual dtype
        cos, signed_sin = cos[:, :, None], _signed_halves(sin)[:, :, None]  # [b, q, 1, head_dim]
        batch, fed = input_ids.shape
        padded = (batch * fed,)
        hidden = embedded.reshape(*padded, -1)[real] if real is not None else embedded
        heads, rotated_heads, visible = self.heads, self.heads + self.kv_heads, mask.shape[-1]
        for index, (layer, projections) in enumerate(zip(self.layers, self.projections)):
            qkv = self._laid_out(projections.qkv(self._norm(hidden, layer.input_layernorm)), real, padded)
            qkv = qkv.view(batch, fed, rotated_heads + self.kv_heads, self.head_dim)
            rotated = _rotate(qkv[:, :, :rotated_heads], cos, signed_sin).to(self.dtype)  # queries and keys at once
            query, key = rotated[:, :, :heads].transpose(1, 2), rotated[:, :, heads:].transpose(1, 2)
            value = qkv[:, :, rotated_heads:].transpose(1, 2)
            keys, values = cache.keys[index, rows], cache.values[index, rows]
            index_of = slots[:, None, :, None].expand_as(key)
            keys.scatter_(2, index_of, key)
            values.scatter_(2, index_of, value)
            attended = self._attention(query, keys[:, :, :visible], values[:, :, :visible], mask).transpose(1, 2)
            attended = attended.reshape(*padded, -1)[real] if real is not None else attended.reshape(batch, fed, -1)
            hidden = hidden + projections.output(attended)
            hidden = hidden + projections.mlp(self._norm(hidden, layer.post_attention_layernorm))
        if last_only:
            if real is not None:
                raise ValueError("last_only is for prefills, which have no fillers")
            return self.head(self._norm(hidden[:, -1:], inner.norm))
        logits = self.head(self._norm(hidden, inner.norm))
        return self._laid_out(logits, real, padded).view(batch, fed, -1)

    def ragged(
        self, cache: StaticKVCache, plan: RaggedPlan | PrefillPlan, logits_of: slice = slice(None)
    ) -> torch.Tensor:
        """Logits [n, vocab] of a ragged pass's fed tokens (`RaggedPlan`: real tokens only, float32 on a
        CPU; `PrefillPlan`: a prompt); the same computation as `__call__`, with each row's attention in
        one kernel call. `logits_of`: the fed tokens whose logits to compute (a prefill needs its last
        token's only)."""
        if self.fused is not None:
            return self.head(self._fused_hidden(cache, plan, logits_of))
        inner = self.model.model
        hidden = inner.embed_tokens(torch.from_numpy(plan.input_ids))
        cos, signed_sin = self.angles(torch.from_numpy(plan.positions))
        cos, signed_sin = cos[:, None], signed_sin[:, None]  # [n, 1, head_dim]: one angle per head
        tokens, rotated_heads = hidden.shape[0], self.heads + self.kv_heads
        for index, (layer, projections) in enumerate(zip(self.layers, self.projections)):
            qkv = projections.qkv(self._norm(hidden, layer.input_layernorm))
            qkv = qkv.view(tokens, rotated_heads + self.kv_heads, self.head_dim)
            rotated = _rotate(qkv[:, :rotated_heads], cos, signed_sin)  # queries and keys at once
            attended = plan.attend(cache, index, rotated, qkv, self.scaling)
            if index == len(self.layers) - 1:  # the cache is written: what remains only makes logits
                attended, hidden = attended[logits_of], hidden[logits_of]
            hidden = hidden + projections.output(attended)
            hidden = hidden + projections.mlp(self._norm(hidden, layer.post_attention_layernorm))
        return self.head(self._norm(hidden, inner.norm))

    def greedy_ragged(
        self, cache: StaticKVCache, plan: RaggedPlan | PrefillPlan, logits_of: slice = slice(None)
    ) -> list[int]:
        """Greedy tokens (each its logits' argmax) of a ragged pass's fed tokens (those of `logits_of`),
        on the fused layers: through the head's bfloat16 screen up to its `most_rows` tokens (as far as it
        was measured faster than the float32 head); beyond, the float32 head and an argmax."""
        hidden = self._fused_hidden(cache, plan, logits_of)
        if self.screened_head is not None and len(hidden) <= self.screened_head.most_rows:
            return self.screened_head.tokens(hidden)
        return argmax_tokens(self.head(hidden))

    def _fused_hidden(self, cache: StaticKVCache, plan: RaggedPlan | PrefillPlan, logits_of: slice) -> torch.Tensor:
        """The fused layers' pass: the head's input for the fed tokens of `logits_of`, [n, dim]."""
        if self.fused is None:
            raise ValueError("the fused layers do not run for this model here")
        tokens = len(plan.input_ids)
        kept = range(tokens)[logits_of]
        if kept.step != 1 or kept.stop != tokens or not kept:
            raise ValueError("the fused layers compute the logits of a last run of fed tokens")
        return self.fused(cache, plan, tail=kept.start)

    def _attention(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention of query [b, heads, q, d] over keys and values [b, kv_heads, k, d] through the additive
        mask [b, 1, q, k]: [b, heads, q, d]."""
        if self.grouped_products:
            return self._grouped_attention(query, keys, values, mask)
        if self.repeat_kv:
            keys, values = self._repeated(keys), self._repeated(values)
        return F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=keys.shape[1] != self.heads
        )

    def _grouped_attention(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention as two batched products per key head, its group of query heads stacked as one
        matrix, so each row's keys and values are read once for all of them. On a CPU this is 1.4-2x
        faster than SDPA's kernel for 2..8 fed tokens a row (which runs a block per query head)."""
        b, heads, q, d = query.shape
        kv_heads, visible = keys.shape[1], keys.shape[2]
        groups = heads // kv_heads
        stacked = query.contiguous().view(b, kv_heads, groups * q, d)
        scores = torch.matmul(stacked, keys.transpose(-1, -2)).mul_(self.scaling)
        scores = scores.view(b, kv_heads, groups, q, visible).add_(mask.view(b, 1, 1, q, visible))
        weights = torch.softmax(scores, dim=-1).view(b, kv_heads, groups * q, visible)
        return torch.matmul(weights, values).view(b, heads, q, d)

    def _norm(self, hidden: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """transformers' RMSNorm as one fused operation (it runs six), in the residual stream's dtype,
        rounded to the model's for the products (no operation when the two are the same)."""
        weight = self._norm_weights[norm]
        return F.rms_norm(hidden, (hidden.shape[-1],), weight, norm.variance_epsilon).to(self.dtype)

    def _repeated(self, grouped: torch.Tensor) -> torch.Tensor:
        """[b, kv_heads, k, d] -> [b, heads, k, d], each key head serving its group of query heads."""
        b, kv_heads, k, d = grouped.shape
        groups = self.heads // kv_heads
        return grouped[:, :, None].expand(b, kv_heads, groups, k, d).reshape(b, self.heads, k, d)

    @staticmethod
    def _laid_out(values: torch.Tensor, real: torch.Tensor | None, padded: tuple[int]) -> torch.Tensor:
        """Rows of the real fed tokens back in the padded layout (fillers zero)."""
        if real is None:
            return values
        out = values.new_zeros(*padded, values.shape[-1])
        return out.index_copy_(0, real, values)


def _signed_halves(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == x.roll(d / 2) * signed sin."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding, x * cos + rotate_half(x) * sin, in four operations instead of five per tensor."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
