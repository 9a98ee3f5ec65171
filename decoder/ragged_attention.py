"""A verification pass over real fed tokens only, for a float32 batch on a CPU.

The padded layout (`tree_batch.pack`) feeds every row the same number of slots and attends over the
longest row's history: with 8 rows of trees of different sizes, fillers and other rows' history
cost a drafted pass about as much as its products. A `RaggedPlan` lists only the real fed tokens,
row by row, and `attend` runs one layer's attention for them with ragged_attention_kernel.c: each
row's history and tree are read once per key head, for all its tokens and query heads.

The rule is the padded pass's (each fed token sees its row's history, its ancestors and itself);
tests hold the two passes' logits equal to float32 rounding, and decoding token-identical to
`generate`. Without the kernel (no C compiler at install) or for other dtypes, the padded pass runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .static_cache import StaticKVCache

try:  # built by the install (ragged_attention_kernel.c)
    from decoder import _ragged_attention
except ImportError:  # built without a C compiler: the padded pass answers
    _ragged_attention = None

MAX_FED = 64  # a fed token's ancestry is one uint64


def available(cache_dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether ragged passes can run here: the kernel is built, and reads float32 caches on a CPU in
    whole vectors of 16 floats per head, up to 256."""
    return (
        _ragged_attention is not None
        and cache_dtype == torch.float32
        and device.type == "cpu"
        and head_dim % 16 == 0
        and head_dim <= 256
    )


@dataclass(slots=True)  # not frozen: a frozen dataclass's constructor doubles its share of a step's host time
class RaggedPlan:
    """The real fed tokens of one pass, row after row. Token t of row `row_of[t]` sits at fed offset
    `offset_of[t]` (slot starts[row] + offset) and sees the row's history and the offsets whose bits
    are set in `sees[t]`."""

    input_ids: np.ndarray  # int64 [n]
    positions: np.ndarray  # int64 [n]
    row_of: np.ndarray  # int64 [n]
    offset_of: np.ndarray  # int64 [n]
    starts: np.ndarray  # int64 [rows]
    sees: np.ndarray  # uint64 [n]
    counts: list[int]  # tokens per row
    width: int  # the pass's fed slots a row, as `laid_out` lays the logits out

    @classmethod
    def of(
        cls, tokens: list[list[int]], seen: list[list[int]], depths: list[list[int]], starts: np.ndarray, width: int
    ) -> RaggedPlan:
        """Per row: its fed tokens, the fed offsets each one sees as the bits of an integer, their
        depths; the rows' cached lengths, and the pass's width."""
        counts = [len(row) for row in tokens]
        if max(counts, default=0) > MAX_FED:
            raise ValueError(f"a ragged pass holds at most {MAX_FED} fed tokens a row, not {max(counts)}")
        starts = np.ascontiguousarray(starts, np.int64)
        first_slots = starts.tolist()
        # One array for the five per-token columns (a step's host time: each numpy call between passes
        # runs cold); unsigned for the 64-bit `sees`, the others non-negative and read as int64.
        columns = np.array(
            [
                [token for row in tokens for token in row],
                [first_slots[b] + depth for b, row in enumerate(depths) for depth in row],
                [b for b, count in enumerate(counts) for _ in range(count)],
                [offset for count in counts for offset in range(count)],
                [bits for row in seen for bits in row],
            ],
            np.uint64,
        )
        input_ids, positions, row_of, offset_of = columns[:4].view(np.int64)
        return cls(input_ids, positions, row_of, offset_of, starts, columns[4], counts, width)

    @classmethod
    def chain(cls, tokens: list[int], row: int, start: int) -> RaggedPlan:
        """Consecutive tokens of one cache row at slots (and positions) start, start + 1, ..., each
        seeing the row's history and the tokens before it: a chunk of a prompt's prefill."""
        count = len(tokens)
        if not 0 < count <= MAX_FED:
            raise ValueError(f"a chain of a ragged pass holds 1 to {MAX_FED} tokens, not {count}")
        starts = np.zeros(row + 1, np.int64)
        starts[row] = start
        offsets = np.arange(count, dtype=np.uint64)
        return cls(
            input_ids=np.array(tokens, np.int64),
            positions=np.arange(start, start + count, dtype=np.int64),
            row_of=np.full(count, row, np.int64),
            offset_of=offsets.astype(np.int64),
            starts=starts,
            # token i sees offsets 0..i: i + 1 low bits (all 64 for the last of a full chunk)
            sees=np.uint64(2**64 - 1) >> (np.uint64(63) - offsets),
            counts=[0] * row + [count],
            width=count,
        )

    def attend(
        self, cache: StaticKVCache, layer: int, rotated: torch.Tensor, qkv: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """One layer: write the fed keys and values into `cache` and attend. `rotated` [n, heads + kv_heads,
        head_dim] holds the rotated queries then keys, `qkv` [n, heads + 2 kv_heads, head_dim] the values
        after them. Returns [n, heads * head_dim]."""
        tokens, rotated_heads, head_dim = rotated.shape
        kv_heads = qkv.shape[1] - rotated_heads
        heads = rotated_heads - kv_heads
        keys, values = cache.keys, cache.values
        if not (rotated.is_contiguous() and qkv.is_contiguous() and rotated.dtype == qkv.dtype == keys.dtype):
            raise ValueError("ragged attention reads contiguous float32 queries, keys and values like the cache")
        if len(self.starts) > cache.rows or keys.shape[2] != kv_heads or keys.shape[4] != head_dim:
            raise ValueError("the ragged plan does not fit this cache")
        out = torch.empty(tokens, heads * head_dim, dtype=rotated.dtype)
        itemsize = rotated.element_size()
        layer_bytes = keys.stride(0) * itemsize
        _ragged_attention.attend(
            rotated.data_ptr(),
            rotated_heads * head_dim,
            rotated.data_ptr() + heads * head_dim * itemsize,
            rotated_heads * head_dim,
            qkv.data_ptr() + rotated_heads * head_dim * itemsize,
            (rotated_heads + kv_heads) * head_dim,
            out.data_ptr(),
            keys.data_ptr() + layer * layer_bytes,
            values.data_ptr() + layer * layer_bytes,
            self.row_of,
            self.offset_of,
            self.starts,
            self.sees,
            heads,
            kv_heads,
            head_dim,
            keys.shape[3],
            scale,
        )
        return out

    def kernel_chains(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """The plan as layer_kernel.c takes it: one chain of (row_of, offset_of, starts, sees)."""
        return ((self.row_of, self.offset_of, self.starts, self.sees),)

    def laid_out(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, vocab] logits of the real tokens as [rows, width, vocab], fillers zero."""
        rows, width = len(self.counts), self.width
        padded = logits.new_zeros(rows * width, logits.shape[-1])
        padded[torch.from_numpy(self.row_of * width + self.offset_of)] = logits
        return padded.view(rows, width, -1)

    def per_row(self, values: list[int]) -> list[list[int]]:
        """A flat per-token list cut into rows."""
        ends = np.cumsum(self.counts).tolist()
        return [values[end - count : end] for end, count in zip(ends, self.counts)]


@dataclass(frozen=True)
class PrefillPlan:
    """A prompt's prefill into one cache row as one pass: the products over all its tokens at once,
    the attention in chains of up to MAX_FED tokens (a fed token's ancestry is one uint64), each
    chain seeing the ones before it as the row's history once their keys are in the cache."""

    input_ids: np.ndarray  # int64 [n]
    positions: np.ndarray  # int64 [n]
    chains: list[RaggedPlan]

    @classmethod
    def of(cls, prompt: list[int], row: int) -> PrefillPlan:
        chains = [
            RaggedPlan.chain(prompt[start : start + MAX_FED], row, start) for start in range(0, len(prompt), MAX_FED)
        ]
        return cls(np.array(prompt, np.int64), np.arange(len(prompt), dtype=np.int64), chains)

    def kernel_chains(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """Its chains as layer_kernel.c takes them, in order."""
        return tuple(chain for plan in self.chains for chain in plan.kernel_chains())

    def attend(
        self, cache: StaticKVCache, layer: int, rotated: torch.Tensor, qkv: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """`RaggedPlan.attend` for each chain in order, on its own rows of `rotated` and `qkv`."""
        outputs, first = [], 0
        for chain in self.chains:
            rows = slice(first, first + len(chain.offset_of))
            outputs.append(chain.attend(cache, layer, rotated[rows], qkv[rows], scale))
            first = rows.stop
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
