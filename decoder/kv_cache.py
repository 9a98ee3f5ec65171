"""Keep only the accepted branch in the KV cache after a tree-verification pass."""

from __future__ import annotations

import torch
from transformers import DynamicCache


def keep_accepted(cache: DynamicCache, past_length: int, fed_kept: list[int]) -> None:
    """Drop the fed tokens not in `fed_kept` (fed indices, root = 0) from every layer.

    The cache holds `past_length` old positions, then one per fed token. A rejected branch may sit
    between accepted nodes, so this gathers the kept positions rather than cropping a suffix.
    """
    index = torch.tensor([past_length + i for i in fed_kept])
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        kept = index.to(layer.keys.device)
        layer.keys = torch.cat([layer.keys[..., :past_length, :], layer.keys.index_select(-2, kept)], dim=-2)
        layer.values = torch.cat([layer.values[..., :past_length, :], layer.values.index_select(-2, kept)], dim=-2)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = layer.keys.shape[-2]
