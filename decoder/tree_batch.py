"""One verification pass for a batch: every row's draft tree laid out in a fixed number of fed slots.

Row b feeds its newest token (the root, not yet cached) and its tree's nodes, then filler tokens up
to the pass's width q. Fed token i of row b sits in cache slot lengths[b] + i, at position
lengths[b] + depth(i), and attends to the row's history and to its own ancestors; a filler attends
only to the history and itself, so it changes nothing. The additive mask spans cache slots
0..visible-1, where visible is rounded up so that shapes repeat from step to step.

Example, one row with 5 cached tokens and tree [a <- root, b <- a, c <- root], q = 4:
fed [root, a, b, c], slots 5..8, positions [5, 6, 7, 6]; c sees slots 0..4, root and itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datastore_service.draft import DraftTree

# The mask's key span is a multiple of this: attention pays for every slot of it, so it is kept small.
VISIBLE_GRANULE = 16


@dataclass(frozen=True)
class FedBatch:
    input_ids: torch.Tensor  # [rows, q]
    positions: torch.Tensor  # [rows, q]
    slots: torch.Tensor  # [rows, q] cache slots the fed tokens are written to
    mask: torch.Tensor  # [rows, 1, q, visible] additive: 0 = attend, dtype min = blocked
    fed_tokens: list[list[int]]  # per row: root then tree nodes (no fillers)
    fed_parents: list[list[int]]  # per row, in fed order; -1 for the root
    real: torch.Tensor | None = None  # flat indices (row * q + i) of the fed tokens, when fillers pad some rows


def ancestry(fed_parents: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    """[width, width] bool: fed token i sees j (its ancestors and itself); and each token's depth.
    Slots past the tree are fillers that see only themselves. Each token's ancestors are gathered as
    the bits of one integer (its parent's, plus its own): a step's host time matters on a CPU."""
    seen = [1 << i for i in range(width)]
    depth = [0] * width
    for i in range(1, len(fed_parents)):  # parents precede children
        parent = fed_parents[i]
        seen[i] |= seen[parent]
        depth[i] = depth[parent] + 1
    if width <= 64:
        bits = np.array(seen, np.uint64)[:, None] >> np.arange(width, dtype=np.uint64)[None, :]
        sees = (bits & np.uint64(1)).astype(bool)
    else:
        sees = np.array([[(mask >> j) & 1 for j in range(width)] for mask in seen], bool)
    return sees, np.array(depth, np.int64)


def pack(
    roots: Sequence[int],
    trees: Sequence[DraftTree],
    lengths: Sequence[int],
    width: int,
    filler: int,
    dtype: torch.dtype,
    device: torch.device,
    visible: int | None = None,
) -> FedBatch:
    """Lay out one pass: `roots[b]` and `trees[b]` (at most width - 1 nodes) after `lengths[b]` cached tokens.
    `visible` fixes the mask's key span (CUDA graphs need one shape); by default it follows the lengths."""
    rows = len(roots)
    ids = np.full((rows, width), filler, np.int64)
    depths = np.zeros((rows, width), np.int64)
    sees = np.zeros((rows, width, width), bool)
    fed_tokens, fed_parents = [], []
    for b, (root, tree) in enumerate(zip(roots, trees)):
        if len(tree) >= width:
            raise ValueError(f"a tree of {len(tree)} nodes does not fit a pass of width {width}")
        tokens = [int(root)] + tree.tokens.tolist()
        parents = [-1] + (tree.parents + 1).tolist()
        ids[b, : len(tokens)] = tokens
        sees[b], depths[b] = ancestry(parents, width)
        fed_tokens.append(tokens)
        fed_parents.append(parents)
    start = np.asarray(lengths, np.int64)[:, None]
    slots = start + np.arange(width)[None, :]
    if visible is None:
        visible = -(-(int(start.max()) + width) // VISIBLE_GRANULE) * VISIBLE_GRANULE
    # Blocked unless history (slots before the row's length) or an ancestor in the row's own tree.
    blocked = np.broadcast_to(np.arange(visible)[None, None, :] >= start[:, :, None], (rows, width, visible)).copy()
    for b, length in enumerate(lengths):  # a row's fed slots are contiguous: a slice, not fancy indexing
        blocked[b, :, length : length + width] = ~sees[b]
    mask = _additive(blocked[:, None], dtype, device)
    counts = [len(tokens) for tokens in fed_tokens]
    real = None
    if sum(counts) < rows * width:
        real = torch.from_numpy(np.concatenate([b * width + np.arange(n) for b, n in enumerate(counts)])).to(device)
    return FedBatch(
        input_ids=torch.from_numpy(ids).to(device),
        positions=torch.from_numpy(start + depths).to(device),
        slots=torch.from_numpy(slots).to(device),
        mask=mask,
        fed_tokens=fed_tokens,
        fed_parents=fed_parents,
        real=real,
    )


def prefill_inputs(prompt: Sequence[int], dtype: torch.dtype, device: torch.device) -> FedBatch:
    """A causal pass over a whole prompt written to slots 0..len-1 of one row."""
    length = len(prompt)
    visible = -(-length // VISIBLE_GRANULE) * VISIBLE_GRANULE
    causal = torch.ones(length, visible, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, length, visible, dtype=dtype).masked_fill_(~causal, torch.finfo(dtype).min)
    positions = torch.arange(length)[None]
    return FedBatch(
        input_ids=torch.tensor([list(prompt)], device=device),
        positions=positions.to(device),
        slots=positions.to(device),
        mask=mask.to(device),
        fed_tokens=[list(prompt)],
        fed_parents=[list(range(-1, length - 1))],
    )


def _additive(blocked: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive mask of a bool one (0 = attend, dtype min = blocked), built in numpy: one array
    op instead of two tensor ops of a step's host time."""
    lowest = np.float32(torch.finfo(dtype).min) if dtype != torch.float64 else np.float64(torch.finfo(dtype).min)
    values = np.where(blocked, lowest, lowest.dtype.type(0))
    return torch.from_numpy(values).to(device=device, dtype=dtype)
