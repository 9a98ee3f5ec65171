"""A preallocated KV cache for tree verification: one tensor for the keys of every layer, one for
the values, written in place and never reallocated while a batch decodes.

Layout: `keys[layer, row, kv_head, slot, head_dim]` (values alike). Row b holds `lengths[b]`
verified tokens in slots 0..lengths[b]-1. A verification pass writes the fed tokens of row b at
slots lengths[b]..lengths[b]+q-1; `keep` then moves the accepted ones down to follow the history
(a rejected branch may sit between two accepted nodes) and advances `lengths`. The last slot is a
scratch slot that padded moves write to, so one batched copy serves rows that keep different
numbers of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

try:  # built by the install (ragged_attention_kernel.c): moves slots without torch's indexing
    from decoder._ragged_attention import keep_slots
except ImportError:  # built without a C compiler: torch moves them
    keep_slots = None


class StaticKVCache:
    def __init__(
        self,
        layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (layers, rows, kv_heads, capacity + 1, head_dim)  # +1: the scratch slot
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.lengths = [0] * rows  # kept on the host: the loop reads it without waiting on the device
        self._moves_in_c = keep_slots is not None and device.type == "cpu"  # torch.zeros is contiguous

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def fits(self, rows: int, tokens: int, dtype: torch.dtype, device: torch.device) -> bool:
        return self.rows == rows and self.capacity >= tokens and self.keys.dtype == dtype and self.keys.device == device

    def reset(self) -> None:
        self.lengths = [0] * self.rows

    def clear_row(self, row: int) -> None:
        """Row `row` holds nothing (its slots are overwritten before they are read again)."""
        self.lengths[row] = 0

    def advance(self, row: int, tokens: int) -> None:
        """Count `tokens` slots written after row `row`'s history (a prefill) as kept."""
        self.lengths[row] += tokens

    def move_row(self, source: int, target: int) -> None:
        """Row `target` takes over row `source`'s history (whatever `target` held is dropped)."""
        held = self.lengths[source]  # only the history: the slots past it are rewritten before being read
        self.keys[:, target, :, :held].copy_(self.keys[:, source, :, :held])
        self.values[:, target, :, :held].copy_(self.values[:, source, :, :held])
        self.lengths[target] = held

    def keep(self, kept: Sequence[Sequence[int]]) -> None:
        """Keep, per row from row 0 on, the fed tokens at offsets `kept[b]` (ascending, from the row's
        length on) and make them the row's next slots; rows past `kept` are left as they are."""
        width = max(len(k) for k in kept)
        if width == 0:
            return
        if self._moves_in_c:
            self._keep_in_c(kept)
        else:
            self._keep_in_torch(kept, width)

    def _keep_in_torch(self, kept: Sequence[Sequence[int]], width: int) -> None:
        """`keep` as one batched gather and scatter (any device), padded moves going to the scratch slot."""
        scratch = self.capacity
        sources, targets, moved = [], [], False
        for row, offsets in enumerate(kept):
            start = self.lengths[row]
            sources.append([start + o for o in offsets] + [scratch] * (width - len(offsets)))
            targets.append([start + i for i in range(len(offsets))] + [scratch] * (width - len(offsets)))
            moved |= list(offsets) != list(range(len(offsets)))
            self.lengths[row] = start + len(offsets)
        if moved:  # a chain accepted from its first node is already in place
            device = self.keys.device
            rows = torch.arange(len(kept), device=device)[:, None]
            source = torch.tensor(sources, device=device)
            target = torch.tensor(targets, device=device)
            for tensor in (self.keys, self.values):
                tensor[:, rows, :, target] = tensor[:, rows, :, source]

    def _keep_in_c(self, kept: Sequence[Sequence[int]]) -> None:
        """`keep` as one C call on a CPU: only the tokens that move are copied (a torch gather and
        scatter over all layers costs ~50-300 us between passes, measured in the decode loop)."""
        moves = []
        for row, offsets in enumerate(kept):
            start = self.lengths[row]
            moves.extend((row, start + offset, start + i) for i, offset in enumerate(offsets) if offset != i)
            self.lengths[row] = start + len(offsets)
        if moves:
            layers, rows, kv_heads, slots, head_dim = self.keys.shape
            row_bytes = head_dim * self.keys.element_size()
            plan = np.array(moves, np.int64)
            keep_slots(self.keys.data_ptr(), self.values.data_ptr(), layers, rows, kv_heads, slots, row_bytes, plan)
