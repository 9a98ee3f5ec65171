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

from .node_budget import first_nodes
from .ragged_attention import RaggedPlan

try:  # the compiled form of `ragged_rows` (step_host_kernel.c), built by the install
    from decoder import _step_host
except ImportError:  # built without a C compiler: the Python rule answers
    _step_host = None

# The mask's key span is a multiple of this: attention pays for every slot of it, so it is kept small.
VISIBLE_GRANULE = 16


@dataclass(slots=True)  # not frozen: a frozen dataclass's constructor doubles its share of a step's host time
class FedBatch:
    # None in a ragged batch, whose `ragged` plan holds the real fed tokens' ids and positions.
    input_ids: torch.Tensor | None  # [rows, q]
    positions: torch.Tensor | None  # [rows, q]
    slots: torch.Tensor | None  # [rows, q] cache slots the fed tokens are written to
    mask: torch.Tensor | None  # [rows, 1, q, visible] additive: 0 = attend, dtype min = blocked
    fed_tokens: list[list[int]]  # per row: root then tree nodes (no fillers)
    fed_parents: list[list[int]]  # per row, in fed order; -1 for the root
    real: torch.Tensor | None = None  # flat indices (row * q + i) of the fed tokens, when fillers pad some rows
    # Without a mask (pack(..., mask_on_device=True)): what `tree_mask` builds it from on the device.
    starts: torch.Tensor | None = None  # [rows] cached tokens before each row's fed ones
    sees: torch.Tensor | None = None  # [rows, q, q] bool: fed token i sees fed token j
    # With pack(..., ragged=True): the real fed tokens alone, for `LlamaTreeForward.ragged` (no mask).
    ragged: RaggedPlan | None = None


def ancestry_bits(fed_parents: Sequence[int]) -> tuple[list[int], list[int]]:
    """Per fed token: the fed tokens it sees (its ancestors and itself) as the bits of one integer,
    and its depth. Gathered from the parent's (parents precede children): a step's host time matters
    on a CPU."""
    seen = [1 << i for i in range(len(fed_parents))]
    depth = [0] * len(fed_parents)
    for i in range(1, len(fed_parents)):
        parent = fed_parents[i]
        seen[i] |= seen[parent]
        depth[i] = depth[parent] + 1
    return seen, depth


def ancestry(seen: list[int], width: int) -> np.ndarray:
    """[width, width] bool from `ancestry_bits`: fed token i sees j. Slots past the tree are fillers
    that see only themselves."""
    seen = seen + [1 << i for i in range(len(seen), width)]
    if width <= 64:
        bits = np.array(seen, np.uint64)[:, None] >> np.arange(width, dtype=np.uint64)[None, :]
        return (bits & np.uint64(1)).astype(bool)
    return np.array([[(mask >> j) & 1 for j in range(width)] for mask in seen], bool)


def pack(
    roots: Sequence[int],
    trees: Sequence[DraftTree],
    lengths: Sequence[int],
    width: int,
    filler: int,
    dtype: torch.dtype,
    device: torch.device,
    visible: int | None = None,
    mask_on_device: bool = False,
    ragged: bool = False,
    counts: Sequence[int] | None = None,
    columns: PlanColumns | None = None,
) -> FedBatch:
    """Lay out one pass: `roots[b]` and `trees[b]` (at most width - 1 nodes) after `lengths[b]` cached tokens;
    with `counts`, only the first `counts[b]` nodes of `trees[b]`.
    `visible` fixes the mask's key span; by default it follows the lengths. `mask_on_device`: leave the
    mask to `tree_mask` on the device (a CUDA graph builds it from `starts` and `sees`, so each step
    sends q x q bits per row instead of a q x visible mask). `ragged`: lay out the real fed tokens alone
    (`RaggedPlan`) instead of a mask, in `columns` if given (`ragged_rows`)."""
    if counts is None:
        counts = [len(tree) for tree in trees]
    if ragged:  # the real tokens alone, their ancestry bits as they are: no padded layout
        plan, fed_tokens, fed_parents = ragged_rows(roots, trees, counts, lengths, width, columns=columns)
        return FedBatch(None, None, None, None, fed_tokens, fed_parents, ragged=plan)
    trees = [first_nodes(tree, count) for tree, count in zip(trees, counts)]
    fed_tokens, fed_parents, seen_bits, fed_depths = _fed_rows(roots, trees, width)
    start = np.asarray(lengths, np.int64)[:, None]
    rows = len(roots)
    ids = np.full((rows, width), filler, np.int64)
    depths = np.zeros((rows, width), np.int64)
    for b, (tokens, depth) in enumerate(zip(fed_tokens, fed_depths)):
        ids[b, : len(tokens)] = tokens
        depths[b, : len(tokens)] = depth
    slots = start + np.arange(width)[None, :]
    mask = real = starts = sees_on_device = None
    sees = np.stack([ancestry(seen, width) for seen in seen_bits])
    if mask_on_device:  # a graph replays whole widths: fillers are computed like the rest, no `real`
        starts, sees_on_device = torch.from_numpy(start[:, 0]).to(device), torch.from_numpy(sees).to(device)
    else:
        if visible is None:
            visible = -(-(int(start.max()) + width) // VISIBLE_GRANULE) * VISIBLE_GRANULE
        # Blocked unless history (slots before the row's length) or an ancestor in the row's own tree.
        blocked = np.broadcast_to(np.arange(visible)[None, None, :] >= start[:, :, None], (rows, width, visible)).copy()
        for b, length in enumerate(lengths):  # a row's fed slots are contiguous: a slice, not fancy indexing
            blocked[b, :, length : length + width] = ~sees[b]
        mask = _additive(blocked[:, None], dtype, device)
        real = _real_indices([len(tokens) for tokens in fed_tokens], width, device)
    return FedBatch(
        input_ids=torch.from_numpy(ids).to(device),
        positions=torch.from_numpy(start + depths).to(device),
        slots=torch.from_numpy(slots).to(device),
        mask=mask,
        fed_tokens=fed_tokens,
        fed_parents=fed_parents,
        real=real,
        starts=starts,
        sees=sees_on_device,
    )


class PlanColumns:
    """Reused columns for one engine's ragged plans: the compiled layout writes each step's plan into
    them, and the views of a given count of fed tokens are made once. After a pass has flushed the
    caches a new array object costs a step ~3 us of host time, and a plan has five. A plan laid out
    here is valid until the next one is (a decode step uses its plan within the step)."""

    def __init__(self) -> None:
        self._buffers = np.empty((5, 0), np.int64)
        self._views: dict[int, tuple[np.ndarray, ...]] = {}

    def views(self, tokens: int) -> tuple[np.ndarray, ...]:
        """Five columns of `tokens` items: ids, positions, rows, offsets (int64) and sees (uint64)."""
        views = self._views.get(tokens)
        if views is None:
            if tokens > self._buffers.shape[1]:
                self._buffers, self._views = np.empty((5, max(tokens, 2 * self._buffers.shape[1])), np.int64), {}
            views = (*(column[:tokens] for column in self._buffers[:4]), self._buffers[4, :tokens].view(np.uint64))
            self._views[tokens] = views
        return views


def ragged_rows(
    roots: Sequence[int],
    trees: Sequence[DraftTree],
    counts: Sequence[int],
    lengths: Sequence[int],
    width: int,
    compiled: bool = True,
    columns: PlanColumns | None = None,
) -> tuple[RaggedPlan, list[list[int]], list[list[int]]]:
    """A ragged pass's plan (`RaggedPlan`) of `roots[b]` and the first `counts[b]` nodes of `trees[b]`
    after `lengths[b]` cached tokens, and per row its fed tokens and their fed parents. `compiled`: in
    one call into step_host_kernel.c where it is built (the same plan; this rule stays its reference),
    written into `columns` if given (the plan is then valid until their next one), else into new arrays."""
    starts = np.ascontiguousarray(lengths, np.int64)
    if _step_host is None or not compiled:
        cut = [first_nodes(tree, count) for tree, count in zip(trees, counts)]
        fed_tokens, fed_parents, seen_bits, fed_depths = _fed_rows(roots, cut, width)
        return RaggedPlan.of(fed_tokens, seen_bits, fed_depths, starts, width), fed_tokens, fed_parents
    if len(starts) != len(trees):
        raise ValueError(f"{len(trees)} trees for {len(starts)} rows")
    tokens = len(trees) + sum(counts)
    if columns is None:
        laid_out = (*(np.empty(tokens, np.int64) for _ in range(4)), np.empty(tokens, np.uint64))
    else:
        laid_out = columns.views(tokens)
    fed_tokens, fed_parents = _step_host.ragged_rows(roots, trees, counts, starts, width, *laid_out)
    plan = RaggedPlan(*laid_out[:4], starts, laid_out[4], [len(row) for row in fed_tokens], width)
    return plan, fed_tokens, fed_parents


def _fed_rows(
    roots: Sequence[int], trees: Sequence[DraftTree], width: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[int]]]:
    """Per row: its fed tokens (root, then the tree's nodes), their parents in fed order (-1 for the
    root), the tokens each sees as bits (`ancestry_bits`) and their depths."""
    fed_tokens, fed_parents, seen_bits, depths = [], [], [], []
    for root, tree in zip(roots, trees):
        if len(tree) >= width:
            raise ValueError(f"a tree of {len(tree)} nodes does not fit a pass of width {width}")
        parents = [-1] + (tree.parents + 1).tolist()
        seen, depth = ancestry_bits(parents)
        fed_tokens.append([int(root)] + tree.tokens.tolist())
        fed_parents.append(parents)
        seen_bits.append(seen)
        depths.append(depth)
    return fed_tokens, fed_parents, seen_bits, depths


def tree_mask(starts: torch.Tensor, sees: torch.Tensor, visible: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask `pack` lays out, [rows, 1, q, visible], built on the tensors' device from
    each row's start [rows] and its fed tokens' ancestry [rows, q, q]: slot k is visible to fed token i
    if it is history (k < start) or a fed token i sees (k - start = j, sees[i, j]). Fixed shapes and
    no host sync, so a CUDA graph can hold it."""
    rows, width, _ = sees.shape
    offset = torch.arange(visible, device=sees.device)[None, :] - starts[:, None]  # [rows, visible]
    in_tree = (offset >= 0) & (offset < width)
    column = offset.clamp(0, width - 1)[:, None, :].expand(rows, width, visible)
    allowed = (offset < 0)[:, None, :] | (in_tree[:, None, :] & torch.gather(sees, 2, column))
    # No tensor from a host value here: that would be a host-to-device copy, which graph capture forbids.
    mask = torch.zeros(rows, 1, width, visible, dtype=dtype, device=sees.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def _real_indices(counts: list[int], width: int, device: torch.device) -> torch.Tensor | None:
    """Flat indices (row * width + i) of the fed tokens that are not fillers; None if none is a filler."""
    if sum(counts) == len(counts) * width:
        return None
    return torch.from_numpy(np.concatenate([b * width + np.arange(n) for b, n in enumerate(counts)])).to(device)


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
