"""The learning store's LONGEST and MERGED answers in one compiled call (merged_answer.c).

`trees.answer` states the rule in numpy and stays its reference: tests hold the two bit-identical.
The extension is built by the package install (optional: without a C compiler the install still
succeeds and `answer` runs the numpy rule, ~10x slower for a batch of 64). ctypes releases the GIL
for the call, so the server's ingestion threads run beside a lookup's answer.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache

import numpy as np

from datastore_service.draft import DraftBatch, QueryBatch

EXTENSION = "datastore_service.overlay._merged_answer"

_INT64 = ctypes.c_int64
_POINTER = ctypes.c_void_p
# learned_answers(queries, width, tails, lengths, max_nodes, max_depth,
#   contexts, keys, starts, sizes, tokens, parents, depths, probabilities,
#   store tokens, parents, probabilities, offsets, context_lengths, scores, merge,
#   out tokens, parents, probabilities, offsets, context_lengths, scores, capacity,
#   scratch, scratch_size, replaced)
_ARGUMENTS = (
    [_INT64, _INT64] + [_POINTER] * 4 + [_INT64] + [_POINTER] * 7 + [_POINTER] * 6 + [ctypes.c_int32]
    + [_POINTER] * 6 + [_INT64, _POINTER, _INT64, _POINTER]
)  # fmt: skip


@cache
def kernel() -> ctypes._CFuncPtr | None:
    """The compiled function, or None when the extension was not built."""
    spec = importlib.util.find_spec(EXTENSION)
    if spec is None or spec.origin is None:
        return None
    function = ctypes.CDLL(spec.origin).learned_answers
    function.restype, function.argtypes = _INT64, _ARGUMENTS
    return function


def learned_answers(view, batch: QueryBatch, static: DraftBatch, merge: bool) -> DraftBatch | None:
    """`trees.answer` for LONGEST (merge False) or MERGED (True) with `view`'s learned trees; None
    when no query takes a learned tree (the answer is then `static` itself)."""
    function = kernel()
    assert function is not None, "the compiled answer is not built"
    rows = view.rows
    queries = len(batch.lengths)
    inputs = [
        np.ascontiguousarray(batch.tails, np.int64),
        np.ascontiguousarray(batch.lengths, np.int64),
        np.ascontiguousarray(batch.max_nodes, np.int64),
        np.ascontiguousarray(batch.max_depth, np.int64),
    ]
    learned = [
        np.ascontiguousarray(view.keys, np.uint64),
        np.ascontiguousarray(view.starts, np.int64),
        np.ascontiguousarray(view.sizes, np.int64),
        rows.tokens,
        rows.parents,
        rows.depths,
        rows.probabilities,
    ]
    store = [
        np.ascontiguousarray(static.tokens, np.int32),
        np.ascontiguousarray(static.parents, np.int32),
        np.ascontiguousarray(static.probabilities, np.float32),
        np.ascontiguousarray(static.offsets, np.int64),
        np.ascontiguousarray(static.context_lengths, np.int32),
        np.ascontiguousarray(static.scores, np.float32),
    ]
    store_sizes = np.diff(static.offsets)
    capacity = int(np.maximum(store_sizes, batch.max_nodes).sum()) if queries else 0
    out = [
        np.empty(capacity, np.int32),
        np.empty(capacity, np.int32),
        np.empty(capacity, np.float32),
        np.empty(queries + 1, np.int64),
        np.empty(queries, np.int32),
        np.empty(queries, np.float32),
    ]
    scratch_size = int(max(store_sizes.max(initial=0), batch.max_nodes.max(initial=0)))
    scratch = np.empty(max(scratch_size, 1), np.int32)
    replaced = np.zeros(1, np.int64)
    written = function(
        queries,
        batch.tails.shape[1],
        *(a.ctypes.data for a in inputs),
        len(view.keys),
        *(a.ctypes.data for a in learned),
        *(a.ctypes.data for a in store),
        int(merge),
        *(a.ctypes.data for a in out),
        capacity,
        scratch.ctypes.data,
        scratch_size,
        replaced.ctypes.data,
    )
    if written < 0:
        raise RuntimeError("the compiled answer ran out of room: a bug, its capacity is an upper bound")
    if replaced[0] == 0:
        return None
    tokens, parents, probabilities, offsets, context_lengths, scores = out
    return DraftBatch(tokens[:written], parents[:written], probabilities[:written], offsets, context_lengths, scores)
