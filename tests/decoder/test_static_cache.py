"""`StaticKVCache.keep`: the accepted fed tokens' keys and values move down to follow each row's
history, in C on a CPU (ragged_attention_kernel.c's keep_slots) and in torch elsewhere, both to
the same rule: slot start + i of row b takes fed offset kept[b][i], every layer and key head."""

from __future__ import annotations

import pytest
import torch

from decoder.static_cache import StaticKVCache, keep_slots

LAYERS, ROWS, KV_HEADS, CAPACITY, HEAD_DIM = 3, 4, 2, 40, 16
KEPT = [[0, 2, 5], [0, 1, 2, 3], [], [1]]  # a branch past a rejected node, a chain in place, nothing, a sibling
LENGTHS = [7, 0, 12, 30]


def filled_cache() -> StaticKVCache:
    cache = StaticKVCache(LAYERS, ROWS, KV_HEADS, HEAD_DIM, CAPACITY, torch.float32, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    cache.keys.copy_(torch.randn(cache.keys.shape, generator=generator))
    cache.values.copy_(torch.randn(cache.values.shape, generator=generator))
    for row, length in enumerate(LENGTHS):
        cache.advance(row, length)
    return cache


def expected_after_keep(cache: StaticKVCache) -> tuple[torch.Tensor, torch.Tensor]:
    keys, values = cache.keys.clone(), cache.values.clone()
    for row, offsets in enumerate(KEPT):
        start = LENGTHS[row]
        for i, offset in enumerate(offsets):
            keys[:, row, :, start + i] = cache.keys[:, row, :, start + offset]
            values[:, row, :, start + i] = cache.values[:, row, :, start + offset]
    return keys, values


@pytest.mark.parametrize("way", ["keep", "torch"])
def test_keep_moves_the_accepted_tokens_down(way: str):
    if way == "keep" and keep_slots is None:
        pytest.skip("the C move is not built: keep runs the torch path, tested beside")
    cache = filled_cache()
    keys, values = expected_after_keep(cache)
    if way == "keep":
        cache.keep(KEPT)
    else:
        cache._keep_in_torch(KEPT, max(map(len, KEPT)))
    assert cache.lengths == [length + len(offsets) for length, offsets in zip(LENGTHS, KEPT)]
    history = [slice(0, length + len(offsets)) for length, offsets in zip(LENGTHS, KEPT)]
    for row, kept_slots in enumerate(history):  # the scratch slot and the slots past a row's length may differ
        assert torch.equal(cache.keys[:, row, :, kept_slots], keys[:, row, :, kept_slots])
        assert torch.equal(cache.values[:, row, :, kept_slots], values[:, row, :, kept_slots])


def test_moves_outside_the_cache_are_refused():
    if keep_slots is None:
        pytest.skip("the C move is not built")
    cache = filled_cache()
    cache.lengths[0] = CAPACITY  # a kept offset past the last slot
    with pytest.raises(ValueError, match="outside the cache"):
        cache.keep([[0, 3]])
