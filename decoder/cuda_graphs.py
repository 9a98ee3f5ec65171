"""Verification passes replayed as CUDA graphs: one graph per (rows, width), captured once per cache.

On a GPU a small model's forward pass is a few hundred tiny kernels; launching them from Python
costs far more than running them. A captured graph launches them all at once. Graphs need fixed
shapes and fixed memory, so each width gets static input buffers (ids, positions, slots, each row's
cached length and its fed tokens' ancestry), and every pass of that width copies its inputs there
and replays; the mask over the whole cache is built inside the graph (`tree_batch.tree_mask`), so a
step sends q x q bits per row to the device, not a q x capacity mask.

Capture runs the pass for real, so it writes keys and values: the slots buffer points at the
cache's scratch slot while capturing, and no verified token is touched. Prefill (one row, any
length) runs without a graph.
"""

from __future__ import annotations

import torch

from .llama_forward import LlamaTreeForward
from .static_cache import StaticKVCache
from .tree_batch import FedBatch, tree_mask

WARMUP_RUNS = 2  # on a side stream before capture, as CUDA graph capture requires
GRAPH_INPUTS = ("input_ids", "positions", "slots", "starts", "sees")  # a pass's inputs, as FedBatch names them


class GraphedPasses:
    def __init__(self, forward: LlamaTreeForward, capture: bool = True) -> None:
        """`capture` False runs the same pass body without graphs (what CPU tests exercise)."""
        self.forward, self.capture = forward, capture
        self._cache: StaticKVCache | None = None
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}

    def __call__(self, cache: StaticKVCache, fed: FedBatch) -> torch.Tensor:
        """Logits of a pass over cache rows 0..r-1 of `fed`, laid out by `pack(..., mask_on_device=True)`."""
        inputs = {name: getattr(fed, name) for name in GRAPH_INPUTS}
        if not self.capture:
            return self._body(cache, **inputs)
        graph, buffers, logits = self._graph(cache, tuple(fed.input_ids.shape))
        for name, value in inputs.items():
            buffers[name].copy_(value)
        graph.replay()
        return logits

    def prepare(self, cache: StaticKVCache, rows: int, widths: list[int]) -> None:
        """Capture the graphs of every width for `rows` rows now, so no decoding step pays for a capture
        (narrower batches, once sequences finish, are captured when first met)."""
        if self.capture:
            for width in widths:
                self._graph(cache, (rows, width))

    def _body(
        self,
        cache: StaticKVCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        starts: torch.Tensor,
        sees: torch.Tensor,
    ) -> torch.Tensor:
        """The mask, built on the device over the whole cache, then the pass: ids, positions and slots
        [r, q], each row's cached length `starts` [r] and its fed tokens' ancestry `sees` [r, q, q]."""
        mask = tree_mask(starts, sees, cache.capacity, cache.keys.dtype)
        return self.forward(cache, input_ids, positions, slots, mask, rows=slice(0, input_ids.shape[0]))

    def _graph(
        self, cache: StaticKVCache, shape: tuple[int, int]
    ) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        """The graph of passes of this (rows, width) over this cache, captured on first use."""
        if cache is not self._cache:  # graphs hold the cache's addresses: a new cache needs new graphs
            self._cache, self._graphs = cache, {}
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(cache, shape)
        return self._graphs[shape]

    def _capture(
        self, cache: StaticKVCache, shape: tuple[int, int]
    ) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]:
        rows, width = shape
        device = cache.keys.device
        inputs = {
            "input_ids": torch.zeros(rows, width, dtype=torch.long, device=device),
            "positions": torch.zeros(rows, width, dtype=torch.long, device=device),
            "slots": torch.full((rows, width), cache.capacity, dtype=torch.long, device=device),  # the scratch slot
            "starts": torch.zeros(rows, dtype=torch.long, device=device),
            "sees": torch.eye(width, dtype=torch.bool, device=device).expand(rows, width, width).contiguous(),
        }
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._body(cache, **inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._body(cache, **inputs)
        return graph, inputs, logits
