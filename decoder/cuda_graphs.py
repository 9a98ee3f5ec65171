"""Verification passes replayed as CUDA graphs: one graph per (rows, width), captured once per cache.

On a GPU a small model's forward pass is a few hundred tiny kernels; launching them from Python
costs far more than running them. A captured graph launches them all at once. Graphs need fixed
shapes and fixed memory, so each width gets static input buffers (ids, positions, slots and a mask
over the whole cache), and every pass of that width copies its inputs there and replays.

Capture runs the pass for real, so it writes keys and values: the slots buffer points at the
cache's scratch slot while capturing, and no verified token is touched. Prefill (one row, any
length) runs without a graph.
"""

from __future__ import annotations

import torch

from .llama_forward import LlamaTreeForward
from .static_cache import StaticKVCache

WARMUP_RUNS = 2  # on a side stream before capture, as CUDA graph capture requires


class GraphedPasses:
    def __init__(self, forward: LlamaTreeForward) -> None:
        self.forward = forward
        self._cache: StaticKVCache | None = None
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}

    def __call__(
        self,
        cache: StaticKVCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        if rows.start not in (None, 0) or mask.shape[-1] != cache.capacity:  # not a pass over rows 0..n-1
            return self.forward(cache, input_ids, positions, slots, mask, rows)
        graph, inputs, logits = self._graph(cache, tuple(input_ids.shape), mask.dtype)
        inputs["input_ids"].copy_(input_ids)
        inputs["positions"].copy_(positions)
        inputs["slots"].copy_(slots)
        inputs["mask"].copy_(mask)
        graph.replay()
        return logits

    def prepare(self, cache: StaticKVCache, rows: int, widths: list[int]) -> None:
        """Capture the graphs of every width for `rows` rows now, so no decoding step pays for a capture
        (narrower batches, once sequences finish, are captured when first met)."""
        for width in widths:
            self._graph(cache, (rows, width), cache.keys.dtype)

    def _graph(
        self, cache: StaticKVCache, shape: tuple[int, int], dtype: torch.dtype
    ) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        """The graph of passes of this (rows, width) over this cache, captured on first use."""
        if cache is not self._cache:  # graphs hold the cache's addresses: a new cache needs new graphs
            self._cache, self._graphs = cache, {}
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(cache, shape, dtype)
        return self._graphs[shape]

    def _capture(
        self, cache: StaticKVCache, shape: tuple[int, int], dtype: torch.dtype
    ) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        rows, width = shape
        device = cache.keys.device
        inputs = {
            "input_ids": torch.zeros(rows, width, dtype=torch.long, device=device),
            "positions": torch.zeros(rows, width, dtype=torch.long, device=device),
            "slots": torch.full((rows, width), cache.capacity, dtype=torch.long, device=device),  # the scratch slot
            "mask": torch.zeros(rows, 1, width, cache.capacity, dtype=dtype, device=device),
        }
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.forward(cache, **inputs, rows=slice(0, rows))
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.forward(cache, **inputs, rows=slice(0, rows))
        return graph, inputs, logits
